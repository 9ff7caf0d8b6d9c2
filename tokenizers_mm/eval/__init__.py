"""All evaluation: one :class:`~tokenizers_mm.eval.evaluator.Evaluator` interface, one per modality, one report.

- ``evaluator``: the interface and the driver behind ``tokenizers-mm evaluate`` (:func:`evaluate_checkpoint`);
- ``report``: the report schema every modality writes, its table, model-card section and version-1 conversion;
- ``image`` / ``speech`` / ``shape``: the evaluators (registered per modality in :mod:`tokenizers_mm.registry`);
- ``image_metrics`` (PSNR via torchmetrics, SSIM, FID), ``audio_metrics`` (mel / STFT distances, SI-SDR, STOI,
  PESQ), ``shape_metrics`` (IoU, Chamfer, F-score, normal consistency): the metrics;
- ``baselines`` (JPEG / WebP), ``audio_baselines`` (Opus / MP3): classical codecs at the same size;
- ``plots``: quality against size and against sampling steps.

Submodules are imported on demand so that importing this package stays cheap.
"""
