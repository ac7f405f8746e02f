"""Bad user data: paths out of the image folder, stale builds, silent skips,
blank answers, image lists, broken JSON, a tokenizer bigger than the model."""
import json
import os
import re
import subprocess
import sys

import pytest
import tensorflow_datasets as tfds
from PIL import Image

from mmjax import testing
from mmjax.config import ConfigError, load_config
from mmjax.data import builders, datasets, formats
from mmjax.train.stages import task
from tests.conftest import REPO
from tests.train.recipe_runner import SMALL

# The shapes options of recipe_runner.SMALL: one shared build for the
# in-process tests and `python -m mmjax.main` below.
_SHAPES = dict(num_train=48, num_validation=8, num_test=8, num_heldout=8)


@pytest.fixture(scope="module", autouse=True)
def _quiet():
  tfds.disable_progress_bar()


def _png(path, value=90, size=(6, 5)):
  Image.new("RGB", size, (value, 40, 200)).save(path)


@pytest.fixture
def root(tmp_path):
  """root/data/images/{0..3}.png, root/outside/x.png (a good PNG)."""
  images = tmp_path / "data" / "images"
  images.mkdir(parents=True)
  for i in range(4):
    _png(images / f"{i}.png", 50 * i)
  (tmp_path / "outside").mkdir()
  _png(tmp_path / "outside" / "x.png")
  return tmp_path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data dir holding the small shapes build (and its tokenizer)."""
  path = str(tmp_path_factory.mktemp("shared_data"))
  builders.build(builders.ShapesBuilder, path, **_SHAPES)
  return path


def _config(data_dir, root=None, fmt="llava_conversations", **data):
  config = load_config(os.path.join(REPO, "configs/shapes.py:size=tiny"))
  config.batch_size = 4
  config.stages.sft.data = fmt
  if root is not None:
    config.data.folder_json = str(root / "data" / "llava.json")
    config.data.folder_images = str(root / "data" / "images")
  for key, value in dict(_SHAPES, data_dir=data_dir, **data).items():
    config.data[key] = value
  return config


def _chat(*values):
  return [{"from": "human" if i % 2 == 0 else "gpt", "value": v}
          for i, v in enumerate(values)]


def _llava_record(rid, image="0.png", answer="blue."):
  record = {"id": rid, "conversations": _chat("<image>\nwhat colour?", answer)}
  if image is not None:
    record["image"] = image
  return record


def _write(root, name, records):
  path = root / "data" / name
  if name.endswith(".jsonl"):
    path.write_text("\n".join(json.dumps(r) for r in records))
  else:
    path.write_text(json.dumps(records))
  return path


def _build(root, name, **kwargs):
  cls = (builders.ImageCaptionBuilder if name.endswith(".jsonl")
         else builders.LlavaConversationsBuilder)
  return builders.build(cls, str(root / "tfds"),
                        json_path=str(root / "data" / name),
                        image_dir=str(root / "data" / "images"), **kwargs)


def _ids(builder):
  source = builders.load_source(builder, "train")
  return [source[i]["id"] for i in range(len(source))]


def _reasons(builder):
  return {s["id"]: s["reason"].split(":")[0]
          for s in builders.skipped_records(builder)}


# ---------------------------------------------- 1. paths out of the folder --
@pytest.mark.parametrize("name", ["llava.json", "captions.jsonl"])
def test_image_paths_outside_the_image_folder_are_skipped(root, name):
  os.symlink(root / "outside" / "x.png", root / "data" / "images" / "ln.png")
  paths = {"good": "1.png", "up": "../../outside/x.png",
           "absolute": str(root / "outside" / "x.png"),
           "passwd": "../../../../../../../../etc/passwd",
           "link": "ln.png", "inside_absolute": str(
               root / "data" / "images" / "2.png")}
  if name.endswith(".jsonl"):
    records = [{"id": k, "image": v, "caption": "a box."}
               for k, v in paths.items()]
  else:
    records = [_llava_record(k, v) for k, v in paths.items()]
  _write(root, name, records)
  builder = _build(root, name)
  assert _ids(builder) == ["good", "inside_absolute"]
  assert _reasons(builder) == dict.fromkeys(
      ("up", "absolute", "passwd", "link"), "image outside folder")


# ------------------------------------------------------- 2. stale builds --
def test_editing_the_json_rebuilds(root):
  _write(root, "llava.json", [_llava_record("a"), _llava_record("b", "nope")])
  first = _build(root, "llava.json")
  assert _ids(first) == ["a"]
  _write(root, "llava.json", [_llava_record("a"), _llava_record("b", "1.png"),
                              _llava_record("c", "2.png")])
  second = _build(root, "llava.json")
  assert _ids(second) == ["a", "b", "c"]
  assert second.data_dir != first.data_dir


def test_replacing_an_image_rebuilds_and_same_files_reuse(root, monkeypatch):
  (root / "data" / "images" / "bad.png").write_bytes(b"not a png")
  _write(root, "llava.json", [_llava_record("a"),
                              _llava_record("b", "bad.png")])
  first = _build(root, "llava.json")
  assert _ids(first) == ["a"]
  _png(root / "data" / "images" / "bad.png", 7)  # The user fixes the image.
  second = _build(root, "llava.json")
  assert _ids(second) == ["a", "b"]
  monkeypatch.setattr(builders.LlavaConversationsBuilder, "_encode",
                      lambda *a: pytest.fail("the same files were rebuilt"))
  assert _build(root, "llava.json").data_dir == second.data_dir


# ------------------------------------------- 3. skipped records are said --
def test_too_many_skipped_records_raise(root):
  records = [_llava_record(f"r{i}", "0.png" if i < 8 else f"gone{i}.png")
             for i in range(20)]
  _write(root, "llava.json", records)
  with pytest.raises(builders.BadRecordError,
                     match=r"skipped 12 of 20 records \(reasons: missing "
                     r"image file 12\), see .*skipped.json.*60%.*"
                     r"max_skipped_fraction=0.5"):
    _build(root, "llava.json", max_skipped_fraction=0.5)
  builder = _build(root, "llava.json", max_skipped_fraction=0.6)
  assert builders.skip_line(builder) == (
      "skipped 12 of 20 records (reasons: missing image file 12), see "
      f"{builder.data_dir}/skipped.json")


def test_a_stage_says_which_build_and_what_was_skipped(data_dir, root,
                                                       capsys):
  _write(root, "llava.json", [_llava_record(f"r{i}", f"{i}.png")
                              for i in range(3)] + [_llava_record("x", "no")])
  data = task._mllm_data(_config(data_dir, root), "sft")
  build_dir = data.info["dataset"]
  assert os.path.isfile(os.path.join(build_dir, "skipped.json"))
  out = [l for l in capsys.readouterr().out.splitlines()
         if l.startswith("[sft]")]
  assert out == [
      f"[sft] llava_conversations: 3 records of {root}/data/llava.json, "
      f"build {build_dir}",
      "[sft] skipped 1 of 4 records (reasons: missing image file 1), see "
      f"{build_dir}/skipped.json"]
  assert data.info == dict(data.info, records=4, skipped_records=1,
                           skipped_reasons="missing image file 1")


def test_a_wrong_image_folder_fails(data_dir, root):
  # The folder holds other images: 2 of the 20 names happen to exist.
  _write(root, "llava.json", [_llava_record(f"r{i}", f"{i + 2}.png")
                              for i in range(20)])
  with pytest.raises(builders.BadRecordError, match=r"too many bad records "
                     r".*skipped 18 of 20 .*90%, above max_skipped_fraction"):
    task._mllm_data(_config(data_dir, root), "sft")
  with pytest.raises(ConfigError, match="folder_images='/nonexistent'"):
    task._mllm_data(_config(data_dir, root, folder_images="/nonexistent"),
                    "sft")


@pytest.mark.parametrize("value", [1.5, -0.1])
def test_max_skipped_fraction_is_checked(data_dir, root, value):
  _write(root, "llava.json", [_llava_record("a")])
  with pytest.raises(ConfigError, match="max_skipped_fraction"):
    task._mllm_data(_config(data_dir, root, max_skipped_fraction=value),
                    "sft")


# --------------------------------------------------- 4. blank answers --
def test_blank_answers_are_skipped(root, data_dir):
  _write(root, "llava.json", [_llava_record("a"),
                              _llava_record("blank", answer=" \n\t"),
                              _llava_record("empty", answer="")])
  builder = _build(root, "llava.json")
  assert _ids(builder) == ["a"]
  assert _reasons(builder) == {"blank": "empty turn", "empty": "empty turn"}
  # Records that reach the pipeline some other way are refused there.
  tok = datasets.tokenizer_for(builders.ShapesBuilder(data_dir=data_dir,
                                                      **_SHAPES))
  turns = [{"role": "user", "content": "hi"},
           {"role": "assistant", "content": "   "}]
  with pytest.raises(formats.BadExample, match="blank answer") as e:
    formats.chat_sequence(testing.tiny_mllm_config(), tok, turns, 0,
                          max_len=64)
  assert e.value.kind == "empty"


# ----------------------------------------------------- 5. image lists --
def test_a_list_of_images_is_refused_clearly(root):
  two = _llava_record("two", ["0.png", "1.png"])
  two["conversations"][0]["value"] = "<image>\n<image>\nsame colour?"
  _write(root, "llava.json", [_llava_record("one", ["2.png"]), two,
                              _llava_record("two_one_token",
                                            ["0.png", "1.png"])])
  builder = _build(root, "llava.json")
  assert _ids(builder) == ["one"]  # A one-item list is that image.
  assert _reasons(builder) == {"two": "several images",
                               "two_one_token": "several images"}
  reason = builders.skipped_records(builder)[0]["reason"]
  assert "one image each" in reason and "max_images is 1" in reason


# ------------------------------------------------ 6. broken JSON files --
def test_a_json_syntax_error_names_the_file_and_line(root):
  path = root / "data" / "llava.json"
  path.write_text('[\n {"id": "a", "image": "0.png",\n  "conversations": '
                  '[}\n]')
  with pytest.raises(builders.BadRecordError,
                     match=f"{re.escape(str(path))} is not valid JSON: "
                     ".* line 3 column"):
    _build(root, "llava.json")


def test_a_file_of_only_bad_records_names_the_file(root):
  path = root / "data" / "captions.jsonl"
  path.write_text('{"image": "0.png", "caption": "a"\n\n{"image": "1.png"\n')
  with pytest.raises(builders.BadRecordError,
                     match=f"every record of {re.escape(str(path))} is bad: "
                     r"skipped 2 of 2 "
                     r"\(reasons: invalid JSON 2\).*on line 1 column"):
    _build(root, "captions.jsonl")
  path.write_text("\n")
  with pytest.raises(builders.BadRecordError, match="holds no records"):
    _build(root, "captions.jsonl")


@pytest.mark.slow
def test_main_exits_2_with_one_line(data_dir, root):
  # Every BadRecordError of a folder build takes this way out of main.
  path = root / "data" / "llava.json"
  path.write_text('[{"id": "a", "image": "0.png"]')
  cmd = [sys.executable, "-m", "mmjax.main", f"--workdir={root / 'run'}",
         "--config=configs/shapes.py:size=tiny,steps=2",
         f"--config.data.data_dir={data_dir}", *SMALL,
         "--config.stage_order=('sft',)",
         "--config.stages.sft.data=llava_conversations",
         "--config.stages.sft.evals=()", "--config.batch_size=4",
         f"--config.data.folder_json={path}",
         f"--config.data.folder_images={root / 'data' / 'images'}"]
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                        timeout=600, check=False)
  assert proc.returncode == 2, proc.stderr[-3000:]
  # The error is one line, the last; a folder build's progress bar may
  # come before it.
  errors = [l for l in proc.stderr.splitlines() if "error" in l.lower()]
  assert len(errors) == 1 and errors[0].startswith("error: "), proc.stderr
  assert proc.stderr.strip().splitlines()[-1] == errors[0]
  assert "Traceback" not in proc.stderr
  assert "Using custom data configuration" not in proc.stderr
  assert f"{path} is not valid JSON" in errors[0]


# ------------------------------------- 7. tokenizer bigger than the model --
def test_a_tokenizer_bigger_than_the_model_is_refused(data_dir):
  config = _config(data_dir, fmt="shapes")
  config.model.lm.vocab_size = 256  # The dataset's tokenizer has 512.
  with pytest.raises(ConfigError, match=r"has 512 pieces but "
                     r"config.model.lm.vocab_size=256.*--config.model.lm."
                     r"vocab_size=512.*config.data.vocab_size"):
    task._mllm_data(config, "sft")
  config.model.lm.vocab_size = 512
  assert task._mllm_data(config, "sft").tokenizer.vocab_size == 512
