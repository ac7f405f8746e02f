"""The tones benchmark: a pure function of (seed, split, index) whose answers
are what the sound says (measured from the samples), and its TFDS build."""
import json
import os

import numpy as np
import pytest

from mmjax.data import builders, datasets, tones, tones_builder
from mmjax.data.text_corpus import COUNT_WORDS
from mmjax.data.tokenizer import Tokenizer

FRAME = 160  # 10 ms


def _frame_rms(audio):
  n = len(audio) // FRAME
  return np.sqrt((audio[:n * FRAME].reshape(n, FRAME) ** 2).mean(axis=1))


def count_by_envelope(audio):
  """Tones = runs of 10 ms frames whose RMS is well above the noise floor
  (-50 dB at most; the softest tone's RMS is -36 dB)."""
  loud = _frame_rms(audio) > 10 ** (-44 / 20)
  onsets = np.flatnonzero(loud[1:] & ~loud[:-1]) + 1
  return len(onsets) + int(loud[0])


def _segments(ex):
  audio = tones.from_int16(ex["audio"])
  for tone in ex["tones"]:
    a = int(tone["start"] * tones.SAMPLE_RATE) + 200  # past the fade in
    b = a + int(tone["duration"] * tones.SAMPLE_RATE) - 400
    yield tone, audio[a:b]


def _harmonic_share(segment, frequency, k):
  """Energy near harmonic k relative to the fundamental's."""
  spec = np.abs(np.fft.rfft(segment * np.hanning(len(segment)), 1 << 16))
  hz = np.fft.rfftfreq(1 << 16, 1 / tones.SAMPLE_RATE)
  near = lambda f: spec[np.abs(hz - f) < 15].max()
  return near(k * frequency) / near(frequency)


def test_examples_are_pure_functions_of_seed_split_index():
  a, b = tones.example("test", 17, seed=3), tones.example("test", 17, seed=3)
  assert np.array_equal(a["audio"], b["audio"]) and a["qa"] == b["qa"]
  assert a["audio"].dtype == np.int16 and a["audio"].shape == (
      tones.CLIP_SAMPLES,)
  other = tones.example("test", 18, seed=3)
  assert not np.array_equal(a["audio"], other["audio"])
  assert not np.array_equal(a["audio"], tones.example("train", 17, 3)["audio"])
  with pytest.raises(ValueError, match="split"):
    tones.example("heldout", 0)


@pytest.mark.parametrize("index", range(40))
def test_answers_match_the_sound(index):
  ex = tones.example("validation", index)
  audio = tones.from_int16(ex["audio"])
  answers = {q["qtype"]: q for q in ex["qa"]}
  n = len(ex["tones"])
  assert count_by_envelope(audio) == n
  assert answers["count"]["answer"] == COUNT_WORDS[n - 1]
  segs = list(_segments(ex))
  # The strongest frequency of each tone is its pitch.
  for tone, seg in segs:
    spec = np.abs(np.fft.rfft(seg * np.hanning(len(seg)), 1 << 16))
    peak = np.fft.rfftfreq(1 << 16, 1 / tones.SAMPLE_RATE)[spec.argmax()]
    assert abs(peak - tone["frequency"]) < 10, (peak, tone)
  first, first_seg = segs[0]
  # Waveform from the harmonics: a sine has none, a square no even ones.
  second_h = _harmonic_share(first_seg, first["frequency"], 2)
  third_h = _harmonic_share(first_seg, first["frequency"], 3)
  heard = ("sine" if third_h < 0.05 else
           "square" if second_h < 0.05 else "sawtooth")
  assert answers["waveform"]["answer"] == heard == first["waveform"]
  assert ("pitch" in answers) == ("loudness" in answers) == (n > 1)
  if n > 1:
    higher = segs[1][0]["frequency"] > first["frequency"]
    q = answers["pitch"]
    asks_higher = "higher" in q["question"]
    assert q["answer"] == ("yes" if higher == asks_higher else "no")
    rms = [float(np.sqrt((s ** 2).mean())) for _, s in segs]
    louder = all(b > a * 10 ** (3 / 20) for a, b in zip(rms, rms[1:]))
    assert answers["loudness"]["answer"] == ("yes" if louder else "no")


def test_question_types_and_answers_are_balanced():
  qa = [q for i in range(300) for q in tones.example("train", i)["qa"]]
  by_type = {t: [q["answer"] for q in qa if q["qtype"] == t]
             for t in tones.QTYPES}
  assert all(len(v) > 150 for v in by_type.values())
  for qtype in ("pitch", "loudness"):
    yes = by_type[qtype].count("yes") / len(by_type[qtype])
    assert 0.35 < yes < 0.65, (qtype, yes)
  assert set(by_type["waveform"]) == set(tones.WAVEFORMS)
  assert set(by_type["count"]) == set(COUNT_WORDS[:tones.MAX_TONES])


def test_builder_round_trips_and_stores_a_tokenizer_with_audio(tmp_path):
  builder = builders.build(tones_builder.TonesBuilder, str(tmp_path),
                           num_train=6, num_validation=2, num_test=3)
  assert builder.info.splits["test"].num_examples == 3
  source = builders.load_source(builder, "test")
  for i in range(3):
    record, ex = source[i], tones.example("test", i)
    assert record["id"] == ex["id"] and record["image"] is None
    assert np.array_equal(record["audio"], ex["audio"])
    assert record["questions"] == [q["question"] for q in ex["qa"]]
    assert record["answers"] == [q["answer"] for q in ex["qa"]]
    assert json.loads(record["tones"])[0]["waveform"] == ex["tones"][0][
        "waveform"]
  tok = Tokenizer.load(os.path.join(builder.data_dir, "tokenizer.model"))
  assert tok.audio_id is not None and tok.encode("<audio>") [-1] == (
      tok.audio_id)
  # The same options reuse the build; the name registers it for recipes.
  again = builders.build(tones_builder.TonesBuilder, str(tmp_path),
                         num_train=6, num_validation=2, num_test=3)
  assert again.data_dir == builder.data_dir
  assert datasets.SYNTHETIC_DATASETS["tones"][0] is tones_builder.TonesBuilder
  with pytest.raises(ValueError, match="Unknown tones options"):
    tones_builder.tones_config(num_heldout=3)
