"""Distillation teachers: loading, time alignment, CTC word timing, precomputed shards cropped with the audio.

Every model here is tiny, random and built by the test into ``tmp_path`` (nothing is downloaded).
"""

import argparse
import io
import json
import os
import random

import numpy as np
import pytest
import soundfile as sf
import torch
import webdataset as wds
from torch.utils.data import DataLoader
from webdataset.tariterators import tarfile_samples

from tokenizers_mm.data import ShardDataModule
from tokenizers_mm.data.audio import crop_start, decode_audio
from tokenizers_mm.data.samples import make_decoder
from tokenizers_mm.data.stream import TrainStream
from tokenizers_mm.speech import teacher_features
from tokenizers_mm.speech.teachers import (
    DistillationTargets,
    LMTeacher,
    SpeechTeacher,
    align_mask,
    align_to_frames,
    ctc_word_spans,
    piece_spans,
    render_spans,
)

BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "cat", "##s", "the", "a"]
CTC_VOCAB = ["<pad>", "<s>", "</s>", "<unk>", "|", *"ABCDEFGHIJKLMNOPQRSTUVWXYZ'"]


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, str]:
    """Tiny HuBERT (+ preprocessor), BERT (+ fast tokenizer from a vocab file), wav2vec2 CTC (+ CTC tokenizer)."""
    from transformers import (
        BertConfig,
        BertModel,
        BertTokenizerFast,
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2CTCTokenizer,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2ForCTC,
    )

    root = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    small = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                 conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    HubertModel(HubertConfig(**small)).save_pretrained(root / "hubert")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True).save_pretrained(root / "hubert")

    (root / "bert_vocab").mkdir()
    (root / "bert_vocab" / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    BertModel(BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=48, max_position_embeddings=64)).save_pretrained(root / "bert")
    # from a folder holding vocab.txt (transformers 5 ignores a vocab_file= argument)
    BertTokenizerFast.from_pretrained(str(root / "bert_vocab"), local_files_only=True).save_pretrained(root / "bert")

    (root / "ctc_vocab.json").write_text(json.dumps({c: i for i, c in enumerate(CTC_VOCAB)}))
    asr = Wav2Vec2ForCTC(Wav2Vec2Config(vocab_size=len(CTC_VOCAB), pad_token_id=0, feat_extract_norm="layer",
                                        do_stable_layer_norm=True, **small))
    asr.save_pretrained(root / "asr")
    Wav2Vec2CTCTokenizer(str(root / "ctc_vocab.json")).save_pretrained(root / "asr")
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=True, return_attention_mask=True
                             ).save_pretrained(root / "asr")
    return {k: str(root / k) for k in ("hubert", "bert", "asr")}


@pytest.fixture(scope="module")
def speech_teacher(models) -> SpeechTeacher:
    return SpeechTeacher(models["hubert"], layer=-1, sample_rate=16000)


@pytest.fixture(scope="module")
def lm_teacher(models) -> LMTeacher:
    return LMTeacher(models["bert"])


def _wav_bytes(wave: np.ndarray, sr: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave.astype(np.float32), sr, format="WAV", subtype="FLOAT")
    return buf.getvalue()


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr)
    return buf.getvalue()


# ---- alignment ------------------------------------------------------------------------------------
def test_align_to_frames_is_exact_on_a_ramp():
    centre = lambda n: (torch.arange(n, dtype=torch.float64) + 0.5) / n  # noqa: E731  frame centres in [0, 1]
    ramp = centre(100)[None, :, None].repeat(2, 1, 3)
    down = align_to_frames(ramp, 50)
    assert down.shape == (2, 50, 3) and torch.allclose(down[..., 0], centre(50)[None], atol=1e-12)
    up = align_to_frames(centre(50)[None, :, None], 75)[0, :, 0]
    assert torch.allclose(up[1:-1], centre(75)[1:-1], atol=1e-12)  # interior exact, the two ends clamp
    # lengths: item 1 holds 50 valid frames of 100 -> the first half of the output, no blending with padding
    ramp[1, 50:] = 1e6
    out = align_to_frames(ramp, 50, torch.tensor([100, 50]))
    assert torch.allclose(out[0, :, 0], centre(50), atol=1e-12)
    assert torch.allclose(out[1, :25, 0], centre(50)[:25], atol=1e-12) and out[1, 25:].abs().max() == 0
    assert align_mask(torch.arange(100)[None] < 50, 50).sum() == 25


def test_ctc_word_spans_and_piece_rendering():
    b, d = 0, 4  # blank, word delimiter
    path = [b, 7, 7, b, 8, 8, d, d, b, 9, b, 9, 10, 10, b, 5, b]
    words = ctc_word_spans(torch.tensor(path), blank_id=b, delimiter_id=d, ignore_ids=[5])
    # 7 7 -> one token; the blank between the two 9s keeps both; ignored id 5 acts as a blank
    assert words == [([7, 8], 1, 6), ([9, 9, 10], 9, 14)]
    pos, spans = piece_spans([None, 0, 1, 1, None], [(0.1, 0.3), (0.5, 0.7)])
    assert pos == [1, 2, 3] and np.allclose(spans, [(0.1, 0.3), (0.5, 0.6), (0.6, 0.7)])
    embs = torch.eye(3)
    feats, mask = render_spans(embs, spans, num_frames=10, frame_seconds=0.1)
    assert mask.tolist() == [False, True, True, False, False, True, True, False, False, False]
    assert torch.equal(feats[1], embs[0]) and torch.equal(feats[2], embs[0])
    assert torch.equal(feats[5], embs[1]) and torch.equal(feats[6], embs[2]) and feats[~mask].abs().sum() == 0


# ---- teachers -------------------------------------------------------------------------------------
def test_speech_teacher_shapes_rates_and_padding(models, speech_teacher):
    t = speech_teacher
    assert t.dim == 32 and t.frame_rate == 50.0 and t.front.receptive_field == 400 and t.front.hop == 320
    wave = torch.randn(2, 1, 8000, generator=torch.Generator().manual_seed(0))  # 1 s at 8 kHz
    feats, lengths = t.features(wave, input_rate=8000)
    assert feats.shape == (2, 50, 32) and lengths.tolist() == [50, 50]  # floor(16000 / 320): frame i = [i, i+1)/50 s
    mask = torch.ones(2, 1, 8000, dtype=torch.bool)
    mask[1, :, 4000:] = False
    out = t(wave, 75, mask, input_rate=8000)
    assert out.shape == (2, 75, 32) and not out.requires_grad
    assert out[0].abs().sum(-1).min() > 0 and out[1, :37].abs().sum(-1).min() > 0 and out[1, 38:].abs().sum() == 0
    at24k = SpeechTeacher(models["hubert"], layer=1, input_rate=24000)
    assert at24k(torch.randn(1, 1, 24000), 75).shape == (1, 75, 32)


def test_load_errors_name_the_path(models, tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_model.*config.json"):
        SpeechTeacher(str(tmp_path / "no_such_model"))
    with pytest.raises(ValueError, match=r"bert.*'bert' model, not a self-supervised speech model"):
        SpeechTeacher(models["bert"])
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="empty.*no weights"):
        SpeechTeacher(str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="layer must be in"):
        SpeechTeacher(models["hubert"], layer=5)
    with pytest.raises(ValueError, match="hubert.*speech model: expected a text language model"):
        LMTeacher(models["hubert"])
    with pytest.raises(ValueError, match="not a CTC speech recognizer"):
        LMTeacher(models["bert"], recognizer_path=models["bert"])


class _FakeCTC(torch.nn.Module):
    """Stands in for the recognizer: one-hot logits of a fixed argmax path (one row per 20 ms frame)."""

    def __init__(self, path: list[int], vocab: int) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.logits = torch.nn.functional.one_hot(torch.tensor(path), vocab).float()[None]

    def forward(self, x, attention_mask=None):
        return argparse.Namespace(logits=self.logits.expand(x.shape[0], -1, -1))


def test_recognizer_timing_puts_word_embeddings_on_their_frames(models):
    lm = LMTeacher(models["bert"], recognizer_path=models["asr"])
    assert lm.blank_id == 0 and lm.delimiter_id == 4 and lm.front.frame_rate == 50.0
    wave = torch.randn(1, 1, 16000)
    random_words = lm.transcribe(wave)[0]  # the random tiny recognizer runs end to end
    assert all(isinstance(w, str) and 0 <= s < e <= 1.0 for w, s, e in random_words)
    ids = {c: i for i, c in enumerate(CTC_VOCAB)}
    path = [0] * 50  # 50 frames of 20 ms
    path[5:15] = [ids[c] for c in "HHEELL"] + [0] + [ids[c] for c in "LOO"]  # hello: frames 5..14
    path[15:18] = [4, 4, 4]
    path[30:40] = [ids[c] for c in "CCAATTTTSS"]  # cats: 30..39
    object.__setattr__(lm, "recognizer", _FakeCTC(path, len(CTC_VOCAB)))
    timed = lm.transcribe(wave)[0]
    assert [w for w, _, _ in timed] == ["hello", "cats"]
    assert np.allclose([(s, e) for _, s, e in timed], [(0.1, 0.3), (0.6, 0.8)])
    (embs, wid), = lm.embed_words([["hello", "cats"]])  # [CLS] hello cat ##s [SEP]
    assert wid == [None, 0, 1, 1, None]
    for frames, scale in ((50, 1), (100, 2)):
        feats, mask = lm(wave, frames)
        expect = torch.zeros(frames, dtype=torch.bool)
        expect[5 * scale:15 * scale] = True
        expect[30 * scale:40 * scale] = True
        assert mask[0].tolist() == expect.tolist()
        assert torch.allclose(feats[0, 5 * scale:15 * scale], embs[1].expand(10 * scale, -1))
        assert torch.allclose(feats[0, 30 * scale:35 * scale], embs[2].expand(5 * scale, -1))  # "cat"
        assert torch.allclose(feats[0, 35 * scale:40 * scale], embs[3].expand(5 * scale, -1))  # "##s"
        assert feats[0, ~mask[0]].abs().sum() == 0


def test_transcript_spreads_over_the_voiced_part(lm_teacher):
    wave = torch.zeros(2, 1, 16000)
    wave[:, :, 4000:12000] = torch.randn(8000) * 0.3  # voiced 0.25 .. 0.75 s
    feats, mask = lm_teacher(wave, 100, ["hello world cats", None])
    assert feats.shape == (2, 100, 24) and mask.dtype == torch.bool
    assert mask[0].nonzero().flatten().tolist() == list(range(25, 75)) and not mask[1].any()
    (embs, _), = lm_teacher.embed_words([["hello", "world", "cats"]])
    assert torch.allclose(feats[0, 25], embs[1]) and torch.allclose(feats[0, 74], embs[4])  # hello ... ##s
    with pytest.raises(ValueError, match="needs one transcript per clip"):
        lm_teacher(wave, 100)


def test_frozen_teachers_get_no_gradients_and_stay_out_of_the_codec(speech_teacher):
    codec = torch.nn.Module()
    codec.proj = torch.nn.Linear(32, 32)
    codec.teacher = speech_teacher
    assert list(codec.parameters()) == list(codec.proj.parameters())
    assert set(codec.state_dict()) == {"proj.weight", "proj.bias"}
    codec.train()
    assert not speech_teacher.training and not speech_teacher.model.training
    wave = torch.randn(1, 1, 16000)
    target = speech_teacher(wave, 50)
    loss = (codec.proj(torch.randn(1, 50, 32, requires_grad=True)) - target).pow(2).mean()
    loss.backward()
    assert codec.proj.weight.grad is not None
    assert all(not p.requires_grad and p.grad is None for p in speech_teacher.frozen_parameters())
    codec.double()
    assert next(speech_teacher.model.parameters()).dtype == torch.float64
    codec.float()


# ---- precomputed features in shards ----------------------------------------------------------------
def _synthetic_shard(path: str, seconds: float = 3.0, sr: int = 16000) -> None:
    """Audio whose value tells the time (a ramp) and features that are the frame index."""
    with wds.TarWriter(path) as w:
        for key, secs in (("long", seconds), ("short", 0.3)):
            n = int(secs * sr)
            meta = {"speech": {"frame_rate": 50.0}, "lm": {"frame_rate": 25.0}}
            speech = np.repeat(np.arange(int(secs * 50), dtype=np.float16)[:, None], 4, axis=1)
            lm = np.repeat(np.arange(int(secs * 25), dtype=np.float16)[:, None], 3, axis=1)
            w.write({"__key__": key, "wav": _wav_bytes(np.arange(n) / (sr * seconds), sr),
                     "teacher.json": json.dumps(meta).encode(), "speech_feats.npy": _npy(speech),
                     "lm_feats.npy": _npy(lm), "lm_mask.npy": _npy(np.arange(len(lm)) % 3 != 0)})


def test_loader_crops_features_with_the_audio_window(tmp_path):
    url = str(tmp_path / "train-000000.tar")
    _synthetic_shard(url)
    stream = TrainStream([url], make_decoder("audio", train=True, audio={"seconds": 0.5}), batch_size=2,
                         batches_per_epoch=6, seed=3, shuffle_buffer=0)
    starts = set()
    for batch in DataLoader(stream, batch_size=None):
        assert batch["teacher_speech"].shape == (2, 25, 4) and batch["teacher_lm"].shape == (2, 12, 3)
        for i, key in enumerate(batch["__key__"]):
            speech, smask = batch["teacher_speech"][i, :, 0], batch["teacher_speech_mask"][i]
            lm, lmask = batch["teacher_lm"][i, :, 0], batch["teacher_lm_mask"][i]
            if key == "short":  # 0.3 s padded to 0.5 s: 15 speech frames, 7 LM frames, then masked
                assert smask.tolist() == [True] * 15 + [False] * 10 and speech[:15].tolist() == list(range(15))
                assert lmask.sum() == 4 and lm[~lmask].abs().sum() == 0
                continue
            start_s = round(float(batch["audio"][i, 0, 0]) * 48000) / 16000  # the ramp tells the crop start
            starts.add(start_s)
            first = round(start_s * 50)
            assert smask.all() and speech.tolist() == list(range(first, first + 25))
            lfirst = round(start_s * 25)
            expect = torch.arange(lfirst, lfirst + 12).float()
            assert lmask.tolist() == (expect % 3 != 0).tolist()
            assert torch.equal(lm[lmask], expect[lmask])
    assert len(starts) > 3  # random windows


def test_mixed_datasets_and_teacher_modes(tmp_path):
    url = str(tmp_path / "mixed.tar")
    _synthetic_shard(url)
    with wds.TarWriter(str(tmp_path / "plain.tar")) as w:
        w.write({"__key__": "plain", "wav": _wav_bytes(np.zeros(8000), 16000)})
    with_feats = next(iter(tarfile_samples([{"url": url}])))
    plain = next(iter(tarfile_samples([{"url": str(tmp_path / "plain.tar")}])))
    rng = random.Random(0)
    dec = make_decoder("audio", train=False)
    assert "teacher_speech" in dec(with_feats, rng)
    with pytest.raises(ValueError, match="earlier samples carried"):
        dec(plain, rng)
    assert set(make_decoder("audio", train=False)(plain, rng)) == {"audio", "audio_mask"}
    with pytest.raises(ValueError, match="no precomputed teacher features"):
        make_decoder("audio", train=False, audio={"teacher": "require"})(plain, rng)
    assert "teacher_lm" not in make_decoder("audio", train=False, audio={"teacher": "ignore"})(with_feats, rng)
    with pytest.raises(ValueError, match="teacher must be one of"):
        make_decoder("audio", train=False, audio={"teacher": "sometimes"})


def test_precompute_command_writes_shards_the_loader_crops(models, embedded, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    raw = list(tarfile_samples([{"url": os.path.join(embedded, "audio", "val-000000.tar")}]))[:3]
    with wds.TarWriter(str(src / "val-000000.tar")) as w:
        for i, s in enumerate(raw):
            extra = {"txt": b"hello world"} if i == 0 else {}
            w.write({"__key__": s["__key__"], "flac": s["flac"], "json": s["json"], **extra})
    (src / "dataset.json").write_text(json.dumps({"format_version": 1, "modality": "audio", "counts": {"val": 3}}))
    parser = argparse.ArgumentParser()
    teacher_features.add_parser(parser.add_subparsers(dest="cmd"))
    out = tmp_path / "out"
    args = parser.parse_args(["teacher-features", "--data", str(src), "--out", str(out), "--speech-teacher",
                              models["hubert"], "--lm-teacher", models["bert"], "--layer", "1"])
    assert args.func(args) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["shards"] == {"val": ["val-000000.tar"]} and manifest["counts"] == {"val": 3}
    assert manifest["teacher"]["speech"]["frame_rate"] == 50.0 and manifest["teacher"]["speech"]["layer"] == 1
    written = list(tarfile_samples([{"url": str(out / "val-000000.tar")}]))
    assert [s["__key__"] for s in written] == [s["__key__"] for s in raw]
    for i, (s, r) in enumerate(zip(written, raw)):
        assert s["flac"] == r["flac"] and s["json"] == r["json"]
        meta = json.loads(s["teacher.json"])
        wave, sr = decode_audio(s["flac"])
        feats = np.load(io.BytesIO(s["speech_feats.npy"]))
        assert feats.dtype == np.float16 and feats.shape == (int(wave.shape[1] / sr * 16000) // 320, 32)
        assert meta["speech"]["frames"] == feats.shape[0] and meta["lm"]["alignment"] == ("uniform" if i == 0 else "none")
        lm_mask = np.load(io.BytesIO(s["lm_mask.npy"]))
        assert lm_mask.any() == (i == 0) and np.load(io.BytesIO(s["lm_feats.npy"])).shape == (len(lm_mask), 24)

    # the training decoder cuts the features at the audio crop: same rng draw -> same window
    dec = make_decoder("audio", train=True, audio={"seconds": 0.4})
    s = written[1]
    wave, sr = decode_audio(s["flac"])
    out_s = dec(s, random.Random(7))
    start = crop_start(wave.shape[1] * 16000 // sr, 6400, "random", random.Random(7)) / 16000
    first = round(start * 50)
    feats = torch.from_numpy(np.load(io.BytesIO(s["speech_feats.npy"])).astype(np.float32))
    n = min(20, feats.shape[0] - first)
    assert out_s["teacher_speech"].shape == (20, 32) and torch.equal(out_s["teacher_speech"][:n], feats[first:first + n])

    # through the datamodule (evaluation: windows from the start), and into the codec's frame count
    dm = ShardDataModule(modality="audio", train_urls=str(out), val_urls=str(out), batch_size=3, num_workers=0,
                         audio={"seconds": 0.5})
    dm.setup("validate")
    batch = next(iter(dm.val_dataloader()))
    assert batch["teacher_speech"].shape == (3, 25, 32) and batch["teacher_lm"].shape == (3, 25, 24)
    targets = DistillationTargets()(batch, num_frames=38)
    assert targets["speech"][0].shape == (3, 38, 32) and targets["lm"][1].shape == (3, 38)

    # a rerun resumes (keeps the finished shard); other teachers in the same folder are refused
    before = os.stat(out / "val-000000.tar").st_mtime_ns
    assert args.func(args) == 0 and os.stat(out / "val-000000.tar").st_mtime_ns == before
    with pytest.raises(ValueError, match="holds features of other teachers"):
        teacher_features.precompute_teacher_features(str(src), str(out), speech_teacher=models["hubert"])

    # a recognizer times the LM's words
    out2 = tmp_path / "out2"
    m2 = teacher_features.precompute_teacher_features(str(src), str(out2), lm_teacher=models["bert"],
                                                      recognizer=models["asr"], progress=False)
    assert "speech" not in m2["teacher"] and m2["teacher"]["lm"]["recognizer"] == os.path.abspath(models["asr"])
    first_meta = json.loads(next(iter(tarfile_samples([{"url": str(out2 / "val-000000.tar")}])))["teacher.json"])
    assert first_meta["lm"]["alignment"] in ("ctc", "none") and "speech" not in first_meta
    with pytest.raises(ValueError, match="holds the input shards"):
        teacher_features.precompute_teacher_features(str(src), str(src), speech_teacher=models["hubert"])


def test_distillation_targets_online(models, speech_teacher, lm_teacher):
    wave = torch.randn(2, 1, 16000)
    mask = torch.ones(2, 1, 16000, dtype=torch.bool)
    mask[1, :, 8000:] = False
    targets = DistillationTargets(speech_teacher, lm_teacher)({"audio": wave, "audio_mask": mask}, 75,
                                                             texts=["hello world", "a cat"])
    feats, fmask = targets["speech"]
    assert feats.shape == (2, 75, 32) and fmask[0].all() and fmask[1].sum() == 38
    assert targets["lm"][0].shape == (2, 75, 24) and targets["lm"][1][0].any()
