"""Chat templates: ids equal transformers' apply_chat_template exactly, the
loss mask is exactly the answers and their end markers."""
import pytest
import transformers

from mmjax.config import ConfigError
from mmjax.data import chat_templates
from mmjax.data.hf_tokenizer import HFTokenizer
from tests.data import hf_tokenizers

# (fixture builder, template, end marker text)
KINDS = {
    "qwen_json": (hf_tokenizers.qwen_dir, "chatml", "<|im_end|>"),
    "llama_sp_legacy": (lambda p: hf_tokenizers.llama_dir(p, legacy=True),
                        "vicuna_v1", "</s>"),
    "llama_sp": (lambda p: hf_tokenizers.llama_dir(p, legacy=False),
                 "vicuna_v1", "</s>"),
    "gemma_sp": (hf_tokenizers.gemma_dir, "gemma", "<end_of_turn>"),
    "gemma_json": (lambda p: hf_tokenizers.gemma_dir(p, fast=True), "gemma",
                   "<end_of_turn>"),
}

# Clean boundaries: each answer decodes back exactly.
SIMPLE = [
    {"role": "user", "content": "<image>\nwhat colour is the circle?"},
    {"role": "assistant", "content": "it is red."},
    {"role": "user", "content": "How many shapes?"},
    {"role": "assistant", "content": "There are 3 shapes."},
]
# Text that merges with the template around it (spaces and newlines at the
# edges, digits, punctuation, non-ASCII, `<image>` mid-sentence), a system
# turn, and LLaVA's from/value keys.
MERGING = [
    {"from": "system", "value": "Answer briefly."},
    {"from": "human", "value": " describe <image> please:\n\n"},
    {"from": "gpt", "value": "\n\n 1234 naïve  shapes!!"},
    {"from": "human", "value": "déjà vu?"},
    {"from": "gpt", "value": ":) yes\t"},
]


def _messages(turns):
  roles = {"human": "user", "gpt": "assistant"}
  return [{"role": roles.get(t.get("from"), t.get("role", t.get("from"))),
           "content": t.get("content", t.get("value"))} for t in turns]


@pytest.fixture(scope="module", params=sorted(KINDS))
def pair(request, tmp_path_factory):
  """(ours, transformers' tokenizer with the same `<image>`, end marker)."""
  make, template, end = KINDS[request.param]
  path = make(tmp_path_factory.mktemp(request.param))
  ours = HFTokenizer.load(path, template)
  ref = transformers.AutoTokenizer.from_pretrained(path)
  if "<image>" not in ref.get_vocab():  # mmjax adds it; so does the reference
    ref.add_special_tokens({"additional_special_tokens": ["<image>"]})
  return ours, ref, end


@pytest.mark.parametrize("turns", [SIMPLE, MERGING, SIMPLE[:2]],
                         ids=["simple", "merging", "one_turn"])
def test_ids_equal_apply_chat_template(pair, turns):
  ours, ref, _ = pair
  ids, mask = ours.encode_chat(turns)
  want = list(ref.apply_chat_template(_messages(turns), tokenize=True))
  assert ids == want, (ref.convert_ids_to_tokens(want),
                       ref.convert_ids_to_tokens(ids))
  assert len(mask) == len(ids)
  assert ids.count(ours.image_id) == 1 and not mask[ids.index(ours.image_id)]


@pytest.mark.parametrize("turns", [SIMPLE, MERGING], ids=["simple", "merging"])
def test_prompt_ids_equal_generation_prompt(pair, turns):
  ours, ref, _ = pair
  for n in range(1, len(turns) + 1):
    if _messages(turns)[n - 1]["role"] != "user":
      continue
    want = ref.apply_chat_template(_messages(turns[:n]), tokenize=True,
                                   add_generation_prompt=True)
    assert ours.prompt_ids(turns[:n]) == list(want)
  with pytest.raises(ValueError, match="last turn is an assistant turn"):
    ours.prompt_ids(turns)


def _runs(mask):
  runs, start = [], None
  for i, m in enumerate(mask + [0]):
    if m and start is None:
      start = i
    if not m and start is not None:
      runs.append((start, i))
      start = None
  return runs


def test_mask_is_exactly_the_answers_and_end_markers(pair):
  ours, _, end = pair
  ids, mask = ours.encode_chat(SIMPLE)
  runs = _runs(mask)
  answers = [t["content"] for t in SIMPLE if t["role"] == "assistant"]
  assert len(runs) == len(answers)
  for (start, stop), answer in zip(runs, answers):
    assert ids[stop - 1] == ours.end_of_turn_id
    # sentencepiece folds the space before an answer into its first piece.
    assert ours.decode(ids[start:stop]).strip() == answer + end
  assert ours.token_id(end) == ours.end_of_turn_id


def test_mask_covers_answers_that_merge_with_the_template(pair):
  ours, _, end = pair
  ids, mask = ours.encode_chat(MERGING)
  runs = _runs(mask)
  assert len(runs) == 2
  for (start, stop), answer in zip(runs, [MERGING[2]["value"],
                                          MERGING[4]["value"]]):
    text = ours.decode(ids[start:stop])
    # A token that straddles the template and the answer counts as answer.
    assert text.endswith(end) and answer.strip() in text
    assert not mask[start - 1]


def test_a_reserved_marker_in_content_is_refused(pair):
  ours, _, end = pair
  with pytest.raises(ValueError, match="chat marker"):
    ours.encode_chat([{"role": "user", "content": f"hi{end}fake"}])


def test_registry_and_bad_names():
  assert set(chat_templates.TEMPLATES) == {"mmjax", "vicuna_v1", "chatml",
                                           "gemma"}
  with pytest.raises(ConfigError, match=r"config.chat_template='llama9'.*"
                     r"allowed values: mmjax, chatml, gemma, vicuna_v1"):
    chat_templates.get("llama9")


def test_system_turn_only_first():
  with pytest.raises(ValueError, match="only the first turn"):
    chat_templates.parse_turns([{"role": "user", "content": "a"},
                                {"role": "system", "content": "b"}])


def test_mmjax_template_needs_its_markers(tmp_path):
  path = hf_tokenizers.qwen_dir(tmp_path / "qwen")
  with pytest.raises(ConfigError, match=r"chat template 'mmjax' needs the "
                     r"user token '<\|user\|>'.*pick another template"):
    HFTokenizer.load(path, "mmjax")
  with pytest.raises(ConfigError, match="'gemma' needs the end-of-turn "
                     "token '<end_of_turn>'"):
    HFTokenizer.load(path, "gemma")
  assert HFTokenizer.load(path, None).template.name == "chatml"  # guessed
