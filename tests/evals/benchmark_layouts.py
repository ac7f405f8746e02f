"""Tiny copies of each official benchmark's published layout, written by
tests: the real file names and fields, a few questions, small images.

  write_pope(tmp_path / "pope")     # -> the directory
  LAYOUT_WRITERS["pope"](tmp_path / "pope")
"""
import base64
import io
import json
import os

from PIL import Image


def _image(path, colour="red", size=(48, 40), fmt=None):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.new("RGB", size, colour).save(path, format=fmt)
  return path


def _ten(*pairs):
  """Ten human answers from (answer, how many) pairs."""
  answers = [a for a, n in pairs for _ in range(n)]
  assert len(answers) == 10
  return answers


def write_vqav2(root):
  root = str(root)
  qs = [(262148000, 262148, "What colour is the square?",
         _ten(("red", 8), ("orange", 2)), "other"),
        (262148001, 262148, "Is it a square?", _ten(("yes", 10)), "yes/no"),
        (42000, 42, "How many shapes?", _ten(("2", 3), ("two", 1),
                                             ("3", 6)), "number")]
  os.makedirs(root, exist_ok=True)
  json.dump({"questions": [{"question_id": q, "image_id": i, "question": t}
                           for q, i, t, _, _ in qs]},
            open(f"{root}/v2_OpenEnded_mscoco_val2014_questions.json", "w"))
  json.dump({"annotations": [
      {"question_id": q, "image_id": i, "answer_type": kind,
       "question_type": "what", "multiple_choice_answer": a[0],
       "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
                   for k, x in enumerate(a)]}
      for q, i, _, a, kind in qs]},
            open(f"{root}/v2_mscoco_val2014_annotations.json", "w"))
  for image_id in (262148, 42):
    _image(f"{root}/val2014/COCO_val2014_{image_id:012d}.jpg", fmt="JPEG")
  return root


def write_textvqa(root):
  root = str(root)
  os.makedirs(root, exist_ok=True)
  data = [{"question_id": 34602, "image_id": "003a8ae2ef43b901",
           "question": "what is written on the sign?",
           "answers": _ten(("stop", 9), ("stop sign", 1)),
           "image_classes": ["Sign"], "set_name": "val"},
          {"question_id": 34603, "image_id": "00685bc495504d61",
           "question": "what number is on the bus?",
           "answers": _ten(("12", 5), ("twelve", 2), ("21", 3)),
           "set_name": "val"}]
  json.dump({"dataset_name": "textvqa", "dataset_type": "val",
             "dataset_version": "0.5.1", "data": data},
            open(f"{root}/TextVQA_0.5.1_val.json", "w"))
  for r in data:
    _image(f"{root}/train_images/{r['image_id']}.jpg", "blue", fmt="JPEG")
  return root


def write_gqa(root):
  root = str(root)
  os.makedirs(root, exist_ok=True)
  data = {"20968379": {"imageId": "n288870", "question": "Is the sky blue?",
                       "answer": "yes", "fullAnswer": "Yes, the sky is blue.",
                       "types": {"structural": "verify", "semantic": "attr",
                                 "detailed": "verifyAttr"}, "isBalanced": True},
          "20968380": {"imageId": "n288870", "question": "What is on the table?",
                       "answer": "cup", "fullAnswer": "The cup is on the table.",
                       "types": {"structural": "query", "semantic": "rel",
                                 "detailed": "relS"}, "isBalanced": True},
          "201640614": {"imageId": "n161313", "question": "Which side is it on?",
                        "answer": "left", "types": {"structural": "query"}}}
  json.dump(data, open(f"{root}/testdev_balanced_questions.json", "w"))
  for image_id in ("n288870", "n161313"):
    _image(f"{root}/images/{image_id}.jpg", "green", fmt="JPEG")
  return root


def write_pope(root):
  root = str(root)
  os.makedirs(root, exist_ok=True)
  images = ("COCO_val2014_000000310196.jpg", "COCO_val2014_000000210789.jpg")
  for sampling in ("random", "popular", "adversarial"):
    with open(f"{root}/coco_pope_{sampling}.json", "w") as f:
      for n, (obj, label) in enumerate((("snowboard", "yes"), ("dog", "no"),
                                        ("car", "yes"), ("cat", "no"))):
        f.write(json.dumps({"question_id": n + 1, "image": images[n % 2],
                            "text": f"Is there a {obj} in the image?",
                            "label": label}) + "\n")
  for name in images:
    _image(f"{root}/val2014/{name}", fmt="JPEG")
  return root


def _b64_png(colour):
  out = io.BytesIO()
  Image.new("RGB", (40, 40), colour).save(out, format="PNG")
  return base64.b64encode(out.getvalue()).decode()


MMBENCH_COLUMNS = ("index", "question", "hint", "A", "B", "C", "D", "answer",
                   "category", "image", "source", "l2-category", "comment",
                   "split")


def write_mmbench(root):
  """Two questions (4 and 2 options); the first also as a shifted copy
  (index + 1,000,000) whose image cell names the original's index."""
  root = str(root)
  os.makedirs(root, exist_ok=True)
  rows = [
      ("0", "What colour is the square?", "", "red", "green", "blue",
       "white", "A", "color_recognition", _b64_png("red"), "x",
       "attribute_reasoning", "", "dev"),
      ("1", "Which shape is shown?", "The image shows one shape.",
       "circle", "square", "", "", "B", "shape_recognition",
       _b64_png("blue"), "x", "attribute_reasoning", "", "dev"),
      ("1000000", "What colour is the square?", "", "green", "blue",
       "white", "red", "D", "color_recognition", "0", "x",
       "attribute_reasoning", "", "dev"),
  ]
  with open(f"{root}/MMBench_DEV_EN.tsv", "w") as f:
    f.write("\t".join(MMBENCH_COLUMNS) + "\n")
    for r in rows:
      f.write("\t".join(r) + "\n")
  return root


def write_mme(root):
  """existence (flat form, .png) and artwork (images/ + questions_answers_YN/,
  .jpg), two images each; code_reasoning (cognition), one image."""
  root = str(root)
  def pair(qa_dir, image_dir, name, obj, yes_first=True, fmt="PNG"):
    os.makedirs(qa_dir, exist_ok=True)
    ext = ".png" if fmt == "PNG" else ".jpg"
    _image(os.path.join(image_dir, name + ext), fmt=fmt)
    lines = [f"Is there a {obj} in this image? Please answer yes or no.\tYes",
             "Is there a zebra in this image? Please answer yes or no.\tNo"]
    with open(os.path.join(qa_dir, name + ".txt"), "w") as f:
      f.write("\n".join(lines if yes_first else lines[::-1]) + "\n")
  flat = os.path.join(root, "existence")
  pair(flat, flat, "000000006040", "train")
  pair(flat, flat, "000000044279", "dog", yes_first=False)
  art = os.path.join(root, "artwork")
  pair(os.path.join(art, "questions_answers_YN"), os.path.join(art, "images"),
       "10002", "painting", fmt="JPEG")
  pair(os.path.join(art, "questions_answers_YN"), os.path.join(art, "images"),
       "10049", "statue", fmt="JPEG")
  code = os.path.join(root, "code_reasoning")
  pair(code, code, "0020", "print")
  return root


LAYOUT_WRITERS = {"vqav2": write_vqav2, "textvqa": write_textvqa,
                  "gqa": write_gqa, "pope": write_pope,
                  "mmbench": write_mmbench, "mme": write_mme}
# Questions each layout holds (MMBench: 2 questions -> 4 + 2 rotations;
# MME: 5 images x 2).
QUESTION_ROWS = {"vqav2": 3, "textvqa": 2, "gqa": 3, "pope": 12,
                 "mmbench": 6, "mme": 10}
