"""Speech: SEANet codec with residual VQ (bitrate chosen at decode time), GAN + mel losses, DM-Codec distillation.

- ``seanet``: convolutional encoder / decoder; ``spectral_encoder``: log-mel frame-rate encoder;
  ``istft_decoder``: Vocos-style frame-rate decoder (learned or Griffin-Lim phase);
  ``codec``: :class:`SpeechCodec` (export-ready, no Lightning);
- ``losses`` / ``discriminators``: training objectives; ``tokenizer``: the Lightning module;
- ``teachers`` / ``teacher_features``: distillation teachers (local transformers models) and their precomputation;
- ``audio_io``: files and spectrogram figures (its evaluation: :mod:`tokenizers_mm.eval.speech`);
- ``projected_rvq``: DAC's per-codebook and Mimi's split quantizers around library quantizers;
  ``latent_transformer``: Mimi's transformers and frame-rate change; ``convert``: import / export of ``transformers``
  EnCodec, DAC and Mimi folders; ``init_from``: training from an export.
"""
