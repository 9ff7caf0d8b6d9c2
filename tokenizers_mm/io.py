"""Atomic writes for the whole project, and the output folders of the commands.

Files: every writer here writes to a temporary name in the destination folder, fsyncs it and renames it over the
final name, so a crash, Ctrl-C or a full disk never leaves a half-written file under a final name and the
previous file stays readable until the new one is complete.

- :func:`write_bytes_atomic`, :func:`write_text_atomic`, :func:`write_json_atomic`: bytes, text, JSON;
- :func:`atomic_path`: a temporary path (same extension) for libraries that write to a path themselves
  (PIL images, soundfile audio, trimesh meshes, matplotlib figures), renamed into place on success;
- :class:`AtomicTarFile`: one webdataset tar shard.

Folders: :class:`OutputFolder` is how ``data build``, ``tokenize``, ``export``, ``evaluate --out`` and
``decode --out`` write their ``--out``. The command writes into a staging folder beside ``--out`` and the
folder is swapped in whole when complete, with a ``made_by.json`` that records what made it (command,
modality, settings, model sha256, inputs' fingerprint) and every file it wrote. An existing ``--out`` is
replaced only when it holds nothing but an earlier output of the same command with the same identity; anything
else (other files, another command, other settings) is an :class:`OutputError` naming the difference, unless
``overwrite`` is given, and then the old folder is replaced whole and atomically. An ``--out`` that is or holds an
input of the command is refused even then. Resumable commands (``data build``, ``tokenize``) keep their staging
folder across interruptions and continue in it only when its ``made_by.json`` agrees with the rerun.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterable, Iterator
from typing import Any

MADE_BY_FILE = "made_by.json"
MADE_BY_FORMAT = "tokenizers-mm-output"
STAGING_MARK = ".partial"
# entries of made_by.json that describe one run rather than what the folder is
RUN_ENTRIES = ("format", "argv", "time", "version", "files")
# the command line recorded in made_by.json (the CLI sets it; else the process's argv)
COMMAND_LINE: list[str] | None = None


class OutputError(ValueError):
    """An ``--out`` this command may not write (foreign files, another command's output, other settings)."""


class EmptyOutputError(ValueError):
    """A command produced no sample; the message gives the number of inputs skipped and the first reasons."""


def empty_output_message(what: str, n_inputs: int, skipped: list[tuple[str, str]]) -> str:
    """``'<what> produced no sample: all N inputs were skipped (first reasons: a: r1; b: r2; c: r3)'``."""
    reasons = "; ".join(f"{name}: {reason}" for name, reason in skipped[:3])
    return (f"{what} produced no sample: all {n_inputs} input(s) were skipped"
            + (f" (first reasons: {reasons})" if reasons else ""))


# ---- files --------------------------------------------------------------------------------------
def _tmp_name(path: str, suffix: str = "") -> str:
    return f"{path}.tmp{os.getpid()}{suffix}"


def fsync_dir(path: str) -> None:
    """fsync a folder so that renames inside it survive a power cut (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _parent(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def write_bytes_atomic(path: str, data: bytes) -> str:
    """Write ``data`` to ``path``: temporary file in the same folder, fsync, rename. Returns ``path``."""
    os.makedirs(_parent(path), exist_ok=True)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def write_text_atomic(path: str, text: str) -> str:
    """UTF-8 text to ``path`` atomically."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str, obj: Any) -> str:
    """``obj`` as indented JSON (trailing newline) to ``path`` atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2) + "\n")


@contextlib.contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yield a temporary path with ``path``'s extension; on success it is fsynced and renamed to ``path``.

    For writers that take a path and pick the format from its extension (``PIL.Image.save``, ``soundfile.write``,
    ``trimesh.export``, ``Figure.savefig``). On an exception the temporary file is removed and ``path`` is untouched.
    """
    os.makedirs(_parent(path), exist_ok=True)
    tmp = _tmp_name(path, os.path.splitext(path)[1])
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicTarFile:
    """One webdataset tar written to ``path.tmp<pid>``, fsynced and renamed to ``path`` by :meth:`commit`.

    Until ``commit`` the final name does not exist (or keeps its previous content), so a crash never
    leaves a truncated shard under a final name; :meth:`abort` removes the temporary file. Members carry a
    fixed mtime, so identical samples give byte-identical shards.
    """

    def __init__(self, path: str) -> None:
        import webdataset as wds

        self.path = path
        self.tmp = _tmp_name(path)
        self.count = 0
        self._stream = open(self.tmp, "wb")
        self._writer = wds.TarWriter(self._stream, mtime=0.0)

    def write(self, sample: dict[str, Any]) -> None:
        self._writer.write(sample)
        self.count += 1

    def commit(self) -> str:
        self._writer.close()
        self._stream.flush()
        os.fsync(self._stream.fileno())
        self._stream.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        try:
            self._writer.close()
        except Exception:  # the tar may be half-written; the temporary file is removed anyway
            pass
        finally:
            self._stream.close()
            if os.path.exists(self.tmp):
                os.remove(self.tmp)


def remove_temp_files(folder: str, names: Iterable[str] | None = None) -> None:
    """Remove ``*.tmp<pid>*`` files of writers whose process is gone (leftovers of a killed run).

    ``names``: only the temporary files of these final names (a rank's own shards: the writers of other ranks may
    run on other machines, where their process ids mean nothing here).
    """
    import re

    if not os.path.isdir(folder):
        return
    keep = set(names) if names is not None else None
    for name in os.listdir(folder):
        m = re.search(r"\.tmp(\d+)", name)
        if m and keep is not None and name[: m.start()] not in keep:
            continue
        if m and not _pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(os.path.join(folder, name))


# ---- fingerprints -------------------------------------------------------------------------------
def file_sha256(path: str, chunk: int = 1 << 22) -> str:
    """sha256 of a file's content, read in 4 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_fingerprint(paths: Iterable[str], root: str | None = None) -> str:
    """sha256 over the (relative) name, size and modification time of each local file; remote URLs by name.

    Names are taken relative to ``root`` when given. Cheap on terabytes of shards, and it changes whenever a
    file is rewritten.
    """
    h = hashlib.sha256()
    for p in paths:
        name = os.path.relpath(p, root) if root else p
        if os.path.isfile(p):
            st = os.stat(p)
            h.update(f"{name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        else:
            h.update(f"{name}\0-\n".encode())
    return h.hexdigest()


# ---- output folders -----------------------------------------------------------------------------
def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def list_files(folder: str) -> list[str]:
    """Relative paths (``/``-separated) of every file under ``folder``, sorted."""
    out = []
    for root, _dirs, names in os.walk(folder):
        for n in names:
            out.append(os.path.relpath(os.path.join(root, n), folder).replace(os.sep, "/"))
    return sorted(out)


def read_made_by(folder: str) -> dict[str, Any] | None:
    """The ``made_by.json`` of ``folder`` (``None`` when there is none or it is not this format)."""
    try:
        with open(os.path.join(folder, MADE_BY_FILE)) as f:
            rec = json.load(f)
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and rec.get("format") == MADE_BY_FORMAT else None


def first_difference(old: Any, new: Any, prefix: str = "") -> str | None:
    """``'key: old -> new'`` for the first entry where two records differ (nested dicts by dotted key)."""
    if isinstance(old, dict) and isinstance(new, dict):
        for key in sorted(set(old) | set(new), key=str):
            if prefix == "" and key in RUN_ENTRIES:
                continue
            diff = first_difference(old.get(key), new.get(key), f"{prefix}{key}.")
            if diff:
                return diff
        return None
    if old != new:
        def short(v: Any) -> str:
            s = json.dumps(v) if not isinstance(v, str) else v
            return s if len(s) <= 80 else s[:77] + "..."

        return f"{prefix.rstrip('.')} was {short(old)}, now {short(new)}"
    return None


def _show(names: list[str]) -> str:
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


class OutputFolder:
    """A command's ``--out`` folder, written in a staging folder beside it and swapped in when complete.

    Args:
        out: the final folder.
        made_by: what makes it: ``command`` (``"data build"``, ...) plus the entries that identify the output
            (``modality``, ``settings``, ``model``, ``inputs``); compared with an existing ``--out``'s record.
        overwrite: replace an ``--out`` that holds anything else (whole and atomically, at :meth:`commit`).
        resumable: keep the staging folder when the command is interrupted, and continue in it on a rerun whose
            record agrees (``tokenize``); else each run stages in a fresh folder of its own.
        legacy: a function ``folder -> bool`` that recognises an earlier output of this command written before
            ``made_by.json`` existed (its files are then taken as the command's own).
        inputs: local paths this command reads; an ``--out`` that is or holds one of them is refused even with
            ``overwrite``.
        identity: the entries of ``made_by`` that must agree for an existing output to be replaced or resumed
            (default: all of them).

    Use :meth:`check` (raises :class:`OutputError` before anything is written), write into :attr:`path`,
    then :meth:`commit` (or :meth:`discard`). :meth:`existing` tells whether ``--out`` already holds this very
    output (a rerun with nothing to do).
    """

    def __init__(self, out: str, made_by: dict[str, Any], overwrite: bool = False, resumable: bool = False,
                 legacy: Any = None, inputs: Iterable[str] = (), identity: Iterable[str] | None = None) -> None:
        from . import __version__

        self.out = os.path.abspath(out)
        self.parent, self.name = os.path.split(self.out)
        self.overwrite = overwrite
        self.resumable = resumable
        self.legacy = legacy
        self.inputs = [os.path.abspath(p) for p in inputs]
        self.identity = tuple(identity) if identity is not None else tuple(made_by)
        self.record = {"format": MADE_BY_FORMAT, **made_by, "version": __version__,
                       "argv": list(COMMAND_LINE or sys.argv), "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        stem = f".{self.name}{STAGING_MARK}"
        self.path = os.path.join(self.parent, stem if resumable else f"{stem}-{os.getpid()}")
        self.resuming = False
        self._checked = False

    def _diff(self, rec: dict[str, Any]) -> str | None:
        return first_difference({k: rec.get(k) for k in self.identity}, {k: self.record.get(k) for k in self.identity})

    @property
    def command(self) -> str:
        return str(self.record.get("command"))

    def _holds_input(self) -> str | None:
        for p in self.inputs:
            if p == self.out or p.startswith(self.out + os.sep):
                return p
        return None

    def _refusal(self, folder: str, what: str) -> str | None:
        """Why ``folder`` may not be replaced by this command's output (None: it may)."""
        if not os.path.isdir(folder):
            return f"{what} {folder!r} exists and is not a folder"
        present = list_files(folder)
        if not present:
            return None
        rec = read_made_by(folder)
        if rec is None:
            if self.legacy is not None and self.legacy(folder):
                return None
            return (f"{what} {folder!r} is not empty and was not written by `tokenizers-mm {self.command}` "
                    f"(it holds {_show(present)})")
        if rec.get("command") != self.command:
            return f"{what} {folder!r} holds the output of `tokenizers-mm {rec.get('command')}`, not of `{self.command}`"
        foreign = sorted(set(present) - set(rec.get("files") or []) - {MADE_BY_FILE})
        if foreign:
            return (f"{what} {folder!r} holds files that `tokenizers-mm {self.command}` did not write "
                    f"({_show(foreign)}); they would be lost")
        diff = self._diff(rec)
        if diff:
            return f"{what} {folder!r} was made by `tokenizers-mm {self.command}` with other settings ({diff})"
        return None

    def existing(self) -> bool:
        """True when ``--out`` already holds a complete output with this identity (nothing to redo)."""
        rec = read_made_by(self.out) if os.path.isdir(self.out) else None
        return (rec is not None and self._diff(rec) is None and self._refusal(self.out, "--out") is None
                and all(os.path.isfile(os.path.join(self.out, f)) for f in rec.get("files") or []))

    def check(self) -> OutputFolder:
        """Refuse (``OutputError``) an ``--out`` this run may not replace; clean this command's own leftovers.

        Returns ``self``. Nothing outside the staging folders of earlier, dead runs is touched.
        """
        hint = "; choose another --out, or pass --overwrite to replace it"
        held = self._holds_input()
        if held:
            raise OutputError(f"--out {self.out!r} is or holds an input of this command ({held!r}); "
                              "writing there would replace the input: choose another --out")
        if os.path.exists(self.out) and not self.overwrite:
            why = self._refusal(self.out, "--out")
            if why:
                raise OutputError(why + hint)
        cwd = os.path.abspath(os.getcwd())
        if self.overwrite and (cwd == self.out or cwd.startswith(self.out + os.sep)
                               or self.out in (os.path.expanduser("~"), os.path.abspath(os.sep))):
            raise OutputError(f"--out {self.out!r} is the working folder, one of its parents or the home folder: "
                              "--overwrite will not replace it; choose a folder of its own")
        os.makedirs(self.parent, exist_ok=True)
        self._remove_dead_staging()
        if self.resumable and os.path.isdir(self.path) and list_files(self.path):
            rec = read_made_by(self.path)
            diff = "it has no made_by.json" if rec is None else self._diff(rec)
            if diff and not self.overwrite:
                raise OutputError(f"an interrupted `tokenizers-mm {self.command}` into {self.out!r} left "
                                  f"{self.path!r}, made with other settings ({diff}); rerun with the same "
                                  "settings to resume, or pass --overwrite to start over")
            if diff:
                shutil.rmtree(self.path)
            else:
                self.resuming = True
        os.makedirs(self.path, exist_ok=True)
        if not self.resuming:
            write_json_atomic(os.path.join(self.path, MADE_BY_FILE), self.record)
        self._checked = True
        return self

    def _remove_dead_staging(self) -> None:
        prefix = f".{self.name}{STAGING_MARK}-"
        for n in os.listdir(self.parent):
            if n.startswith(prefix) and n[len(prefix):].isdigit() and not _pid_alive(int(n[len(prefix):])):
                shutil.rmtree(os.path.join(self.parent, n), ignore_errors=True)

    def commit(self, extra: dict[str, Any] | None = None) -> str:
        """Record the files written, then swap the staging folder in as ``--out`` (atomically). Returns ``out``."""
        assert self._checked, "OutputFolder.check() must run before commit()"
        rec = dict(self.record)
        if extra:
            rec.update(extra)
        rec["files"] = [f for f in list_files(self.path) if f != MADE_BY_FILE and ".tmp" not in f]
        write_json_atomic(os.path.join(self.path, MADE_BY_FILE), rec)
        fsync_dir(self.path)
        if os.path.exists(self.out):
            if not self.overwrite:  # it may have changed since check()
                why = self._refusal(self.out, "--out")
                if why:
                    raise OutputError(why + "; nothing was replaced (the new output is in " + repr(self.path) + ")")
            old = os.path.join(self.parent, f".{self.name}.old-{os.getpid()}")
            os.replace(self.out, old)
            os.replace(self.path, self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.path, self.out)
        fsync_dir(self.parent)
        return self.out

    def discard(self) -> None:
        """Remove the staging folder (kept when resumable: an interrupted run continues in it)."""
        if not self.resumable:
            shutil.rmtree(self.path, ignore_errors=True)

    def relocate(self, obj: Any) -> Any:
        """``obj`` (nested dicts / lists / strings) with paths under the staging folder pointing into ``--out``."""
        if isinstance(obj, str):
            return self.out + obj[len(self.path):] if obj.startswith(self.path) else obj
        if isinstance(obj, dict):
            return {k: self.relocate(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.relocate(v) for v in obj]
        return obj


def check_folder(folder: str) -> str | None:
    """Why the shards of an output folder do not match its records (``None`` when they do).

    Compares the files present with ``made_by.json`` (every recorded file present, no unrecorded ``*.tar``) or,
    for a folder without one, the ``train`` / ``val`` shards with those listed in ``dataset.json``: shards of two
    builds mixed in one folder, or lost ones, are named.
    """
    present = set(list_files(folder))
    rec = read_made_by(folder)
    if rec is not None:
        listed = set(rec.get("files") or [])
        source = MADE_BY_FILE
    else:
        try:
            with open(os.path.join(folder, "dataset.json")) as f:
                manifest = json.load(f)
            listed = {n for names in (manifest.get("shards") or {}).values() for n in names}
        except (OSError, ValueError, AttributeError):
            return None
        source = "dataset.json"
    missing = sorted(n for n in listed - present if n.endswith(".tar"))
    if missing:
        return f"{folder!r}: {_show(missing)} listed in {source} is missing (an incomplete or damaged folder)"
    extra = sorted(n for n in present - listed if n.endswith(".tar") and "/" not in n)
    if extra:
        return (f"{folder!r}: {_show(extra)} is not listed in {source} (shards of another build mixed in); "
                "rebuild the folder")
    return None
