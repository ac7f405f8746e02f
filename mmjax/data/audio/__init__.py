"""Audio input: Whisper's log-mel front end, reading and resampling files.

  from mmjax.data import audio
  wav = audio.load_audio("clip.wav")             # f32[L] mono, 16 kHz
  features, mask = audio.log_mel(wav)            # f32[3000, 80], bool[3000]
  features, mask = audio.log_mel(wav, pad=False) # only the clip's frames

log_mel.py: the features (HF `WhisperFeatureExtractor`); reading.py: files
(soundfile if installed, else the stdlib's WAV reader) and polyphase
resampling to 16 kHz.
"""

from mmjax.data.audio.log_mel import (HOP, MEL_BINS, N_FRAMES, N_SAMPLES,
                                      SAMPLE_RATE, log_mel, log_mel_batch,
                                      mel_filters, valid_frames)
from mmjax.data.audio.reading import (load_audio, read_audio, resample,
                                      resample_ratio, write_wav)

__all__ = ["HOP", "MEL_BINS", "N_FRAMES", "N_SAMPLES", "SAMPLE_RATE",
           "load_audio", "log_mel", "log_mel_batch", "mel_filters",
           "read_audio", "resample", "resample_ratio", "valid_frames",
           "write_wav"]
