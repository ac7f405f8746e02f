"""Synthetic audio benchmark: sequences of tones, captions and questions.

An example is a 16 kHz mono clip of `CLIP_SECONDS` holding 1 to `MAX_TONES`
tones one after another over light white noise, the first after a short
lead-in (`LEAD_SECONDS`), the rest of the clip noise. Each tone has a waveform
(sine, square or sawtooth, band-limited so nothing aliases), a pitch, a
loudness and a duration, with short silences between tones. It is a pure
function of (seed, split, index), like `shapes`: examples can be made in
any order, in parallel or lazily, byte-identically.

Questions have one-word answers, by type (`QTYPES`):

  count     "how many tones are there?"                  one .. five
  pitch     "is the second tone higher (lower) than the first?"
                                                          yes / no (>= 2 tones)
  waveform  "which waveform is the first tone?"          sine / square / sawtooth
  loudness  "is it getting louder?"                      yes / no (>= 2 tones)

"Getting louder" means every tone's RMS level is at least
`LOUDNESS_STEP_DB[0]` dB above the one before; the other clips keep a
steady level (within 2 dB) or get softer by such steps. Pitches of the
first two tones differ by at least `MIN_PITCH_GAP` semitones, so the pitch
question is never a near tie.

Usage:
  ex = tones.example("train", 12, seed=0)   # ex["audio"]: int16[25600]
"""
from __future__ import annotations

import collections
import dataclasses
from typing import Any

import numpy as np

from mmjax.data.text_corpus import COUNT_WORDS

SPLITS = ("train", "validation", "test")
QTYPES = ("count", "pitch", "waveform", "loudness")
WAVEFORMS = ("sine", "square", "sawtooth")
TRENDS = ("louder", "softer", "steady")
SAMPLE_RATE = 16_000
CLIP_SECONDS = 1.6
CLIP_SAMPLES = int(SAMPLE_RATE * CLIP_SECONDS)  # 160 log-mel frames.
MAX_TONES = 5
# Pitches are semitones above A3 (220 Hz): 0..24 spans 220..880 Hz.
PITCH_RANGE = (0, 24)
MIN_PITCH_GAP = 3
LOUDNESS_STEP_DB = (4.0, 7.0)  # Per tone, for louder / softer clips.
# Tone RMS levels in dB of full scale (a waveform of unit RMS scaled):
# wide enough for four steps of 7 dB; the peakiest waveform (sawtooth, peak
# / RMS ~ 1.9) still stays below full scale.
LEVEL_DB = (-36.0, -6.0)
NOISE_DB = (-60.0, -50.0)  # RMS of the background noise.
TONE_SECONDS = (0.1, 0.2)
GAP_SECONDS = (0.06, 0.12)
# Silence before the first tone. Short: "the first tone" is then always
# near the clip's start, which a from-scratch tower finds far sooner than a
# tone anywhere in the clip (the rest of the clip is left as noise).
LEAD_SECONDS = (0.02, 0.08)
RAMP_SECONDS = 0.01  # Fade in and out: no clicks, clean onsets.
# Harmonics above this are left out: band-limited square / sawtooth.
MAX_HARMONIC_HZ = 7_000.0
_PITCH_WORDS = ((5, "low"), (14, "middle"), (99, "high"))  # Upper bounds.
CAPTION_PROMPT = "describe the sound."

QA = collections.namedtuple("QA", "question answer qtype")


@dataclasses.dataclass(frozen=True)
class Tone:
  """One tone: start and duration in seconds, RMS level in dB of full
  scale."""
  waveform: str
  pitch: int  # Semitones above 220 Hz.
  level_db: float
  start: float
  duration: float

  @property
  def frequency(self) -> float:
    return 220.0 * 2.0 ** (self.pitch / 12.0)


@dataclasses.dataclass(frozen=True)
class Clip:
  tones: tuple[Tone, ...]
  trend: str  # One of TRENDS.
  noise_db: float
  noise_seed: int


def _levels(rng: np.random.Generator, n: int, trend: str) -> list[float]:
  """RMS levels (dB) of n tones following the trend, within LEVEL_DB."""
  lo, hi = LEVEL_DB
  if trend == "steady" or n == 1:
    base = float(rng.uniform(lo + 4, hi - 4))
    return [base + float(rng.uniform(-1.0, 1.0)) for _ in range(n)]
  steps = rng.uniform(*LOUDNESS_STEP_DB, size=n - 1)
  span = float(steps.sum())
  start = float(rng.uniform(lo, hi - span))  # span <= 28 < hi - lo.
  levels = [start] + [float(v) for v in start + np.cumsum(steps)]
  return levels if trend == "louder" else levels[::-1]


def sample_clip(rng: np.random.Generator, n_tones: int | None = None
                ) -> Clip:
  """Draws the tones of one clip (count, waveforms, pitches, levels, times).

  n_tones: 1..MAX_TONES, or None to draw it (uniform).
  """
  if n_tones is not None and not 1 <= n_tones <= MAX_TONES:
    raise ValueError(f"n_tones={n_tones} is outside 1..{MAX_TONES}.")
  n = int(rng.integers(1, MAX_TONES + 1)) if n_tones is None else n_tones
  # Louder half of the time (the loudness question is balanced).
  trend = "louder" if rng.random() < 0.5 else TRENDS[1 + int(rng.integers(2))]
  levels = _levels(rng, n, trend)
  pitches = [int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))]
  for _ in range(1, n):
    while True:
      p = int(rng.integers(PITCH_RANGE[0], PITCH_RANGE[1] + 1))
      if len(pitches) > 1 or abs(p - pitches[0]) >= MIN_PITCH_GAP:
        break
    pitches.append(p)
  durations = rng.uniform(*TONE_SECONDS, size=n)
  gaps = rng.uniform(*GAP_SECONDS, size=max(n - 1, 0))
  t = float(rng.uniform(*LEAD_SECONDS))
  tones = []
  for i in range(n):
    tones.append(Tone(WAVEFORMS[int(rng.integers(len(WAVEFORMS)))],
                      pitches[i], levels[i], t, float(durations[i])))
    t += float(durations[i]) + (float(gaps[i]) if i < n - 1 else 0.0)
  return Clip(tuple(tones), trend, float(rng.uniform(*NOISE_DB)),
              int(rng.integers(2**31)))


def _wave(waveform: str, frequency: float, t: np.ndarray) -> np.ndarray:
  """A band-limited waveform of unit RMS at time points t: loudness
  follows the level whatever the waveform."""
  if waveform == "sine":
    return np.sqrt(2.0) * np.sin(2 * np.pi * frequency * t)
  top = int(MAX_HARMONIC_HZ // frequency)
  out, power = np.zeros_like(t), 0.0
  for k in range(1, top + 1):
    if waveform == "square" and k % 2 == 0:
      continue  # A square wave has odd harmonics only, at 1/k.
    out += np.sin(2 * np.pi * k * frequency * t) / k
    power += 0.5 / k ** 2  # Mean square of each sine over whole periods.
  return out / np.sqrt(power)


def render(clip: Clip) -> np.ndarray:
  """The clip's samples f32[CLIP_SAMPLES] in [-1, 1]."""
  noise_rng = np.random.default_rng(clip.noise_seed)
  audio = noise_rng.normal(0.0, 10 ** (clip.noise_db / 20), CLIP_SAMPLES)
  ramp = int(RAMP_SECONDS * SAMPLE_RATE)
  for tone in clip.tones:
    start = int(round(tone.start * SAMPLE_RATE))
    n = int(round(tone.duration * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    envelope = np.ones(n)
    envelope[:ramp] = np.linspace(0.0, 1.0, ramp)
    envelope[-ramp:] = np.linspace(1.0, 0.0, ramp)
    audio[start:start + n] += (10 ** (tone.level_db / 20) * envelope *
                               _wave(tone.waveform, tone.frequency, t))
  return np.clip(audio, -1.0, 1.0).astype(np.float32)


def to_int16(audio: np.ndarray) -> np.ndarray:
  return np.round(audio * 32767.0).astype(np.int16)


def from_int16(audio: np.ndarray) -> np.ndarray:
  """int16 samples -> f32 in [-1, 1] (what the pipeline featurises)."""
  return np.asarray(audio, np.float32) / 32767.0


def _pitch_word(pitch: int) -> str:
  return next(word for bound, word in _PITCH_WORDS if pitch <= bound)


def _join(phrases: list[str]) -> str:
  head = ", ".join(phrases[:-1])
  return f"{head} and {phrases[-1]}" if head else phrases[-1]


def captions(clip: Clip) -> list[str]:
  """[short, detailed] captions, e.g. "three tones, getting louder." and
  "a low sine, a high square and a middle sawtooth, getting louder."."""
  n = len(clip.tones)
  noun = "tone" if n == 1 else "tones"
  trend = "" if n == 1 else {"louder": ", getting louder",
                             "softer": ", getting softer",
                             "steady": ", equally loud"}[clip.trend]
  detail = _join([f"a {_pitch_word(t.pitch)} {t.waveform}"
                  for t in clip.tones])
  return [f"{COUNT_WORDS[n - 1]} {noun}{trend}.", f"{detail}{trend}."]


def questions(clip: Clip, rng: np.random.Generator) -> list[QA]:
  """Count and waveform questions always; pitch and loudness with >= 2
  tones. Answers are one word."""
  tones = clip.tones
  qa = [QA("how many tones are there?", COUNT_WORDS[len(tones) - 1],
           "count")]
  if len(tones) > 1:
    higher = tones[1].pitch > tones[0].pitch
    if rng.random() < 0.5:
      qa.append(QA("is the second tone higher than the first?",
                   "yes" if higher else "no", "pitch"))
    else:
      qa.append(QA("is the second tone lower than the first?",
                   "no" if higher else "yes", "pitch"))
  qa.append(QA("which waveform is the first tone?", tones[0].waveform,
               "waveform"))
  if len(tones) > 1:
    qa.append(QA("is it getting louder?",
                 "yes" if clip.trend == "louder" else "no", "loudness"))
  return qa


def _clip_and_text(split: str, index: int, seed: int):
  if split not in SPLITS or int(index) < 0 or int(seed) < 0:
    raise ValueError(f"Need split in {SPLITS}, index >= 0 and seed >= 0; got "
                     f"{split!r}, {index}, {seed}.")
  # Separate streams: changing the questions leaves the sounds alone.
  streams = np.random.SeedSequence(
      [int(seed), 7, SPLITS.index(split), int(index)]).spawn(2)
  clip_rng, text_rng = (np.random.default_rng(s) for s in streams)
  clip = sample_clip(clip_rng)
  return clip, captions(clip), questions(clip, text_rng)


def tones_json(clip: Clip) -> list[dict[str, Any]]:
  return [dataclasses.asdict(t) | {"frequency": t.frequency}
          for t in clip.tones]


def example(split: str, index: int, seed: int = 0) -> dict[str, Any]:
  """Example `index` (any index >= 0) of a split; a pure function of its args.

  Returns {"id": "test-0000012", "audio": int16[CLIP_SAMPLES], "captions":
  [short, detailed], "qa": [{"question", "answer", "qtype"}], "tones":
  [{"waveform", "pitch", "level_db", "start", "duration", "frequency"}],
  "trend": one of TRENDS}.
  """
  clip, caps, qa = _clip_and_text(split, index, seed)
  return {"id": f"{split}-{int(index):07d}", "audio": to_int16(render(clip)),
          "captions": caps, "qa": [q._asdict() for q in qa],
          "tones": tones_json(clip), "trend": clip.trend}


def qa_text(question: str, answer: str) -> str:
  """One Q/A as LM text: "q: ... a: ...."."""
  return f"q: {question} a: {answer}."


def benchmark_texts(n: int, seed: int = 0) -> list[str]:
  """Captions and `qa_text` lines of train examples 0..n-1 (no audio made):
  the text-only stage's corpus and the tokenizer's training text."""
  texts = []
  for index in range(n):
    _, caps, qa = _clip_and_text("train", index, seed)
    texts += caps + [qa_text(q.question, q.answer) for q in qa]
  return texts
