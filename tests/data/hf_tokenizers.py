"""Tiny Hugging Face tokenizer directories built offline (tests only).

  qwen_dir(path)            byte-level BPE tokenizer.json, ChatML template
  llama_dir(path, legacy)   sentencepiece tokenizer.model only (LlamaTokenizer),
                            `<image>` added at id = its size, vicuna_v1 template
  gemma_dir(path, fast)     Gemma-like sentencepiece (no dummy prefix,
                            `<start_of_turn>` / `<end_of_turn>`), gemma
                            template; fast=True also writes tokenizer.json

The Jinja templates write the strings `mmjax.data.chat_templates` renders,
as the real models' tokenizer_config.json files do.
"""
import io
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import sentencepiece as spm  # pylint: disable=g-import-not-at-top
import tokenizers  # pylint: disable=g-import-not-at-top
import transformers  # pylint: disable=g-import-not-at-top
from tokenizers import decoders, models, pre_tokenizers, trainers  # pylint: disable=g-import-not-at-top

SENTENCES = [
    "the red circle is above the blue square.",
    "a green triangle sits left of the yellow star!",
    "How many shapes are there? There are 3 shapes.",
    "what colour is the circle? it is red, bright red.",
    "Describe the image: two circles and one square, side by side.",
    "user assistant system model hello world 1234 5678",
    "naïve café déjà vu: ümlauts and ß are text too.",
    "\n\nnewlines\n and  double  spaces\tand tabs",
] * 4

CHATML_JINJA = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
    "'<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence "
    "assistant. The assistant gives helpful, detailed, and polite answers to "
    "the human's questions.")
VICUNA_JINJA = (
    "{{ bos_token }}"
    "{% if messages[0]['role'] == 'system' %}"
    "{{ messages[0]['content'] + ' ' }}{% set loop_messages = messages[1:] %}"
    "{% else %}{{ '" + VICUNA_SYSTEM.replace("'", "\\'") + " ' }}"
    "{% set loop_messages = messages %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if message['role'] == 'user' %}"
    "{{ 'USER: ' + message['content'] + ' ' }}"
    "{% else %}{{ 'ASSISTANT: ' + message['content'] + eos_token }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'ASSISTANT:' }}{% endif %}")

GEMMA_JINJA = (
    "{{ bos_token }}{% set ns = namespace(prefix='') %}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}"
    "{% set ns.prefix = message['content'] + '\\n\\n' %}"
    "{% elif message['role'] == 'user' %}"
    "{{ '<start_of_turn>user\\n' + ns.prefix + message['content'] + "
    "'<end_of_turn>\\n' }}{% set ns.prefix = '' %}"
    "{% else %}{{ '<start_of_turn>model\\n' + message['content'] + "
    "'<end_of_turn>\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}"
    "{% endif %}")


def qwen_dir(path) -> str:
  """Qwen2-like: byte-level BPE in tokenizer.json only, no bos, no
  `<image>`."""
  tok = tokenizers.Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(
      vocab_size=400, show_progress=False,
      special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(SENTENCES, trainer)
  fast = transformers.PreTrainedTokenizerFast(
      tokenizer_object=tok, eos_token="<|endoftext|>",
      pad_token="<|endoftext|>", chat_template=CHATML_JINJA)
  fast.save_pretrained(str(path))
  return str(path)


def _train_sp(**kwargs) -> bytes:
  writer = io.BytesIO()
  spm.set_random_generator_seed(0)
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(SENTENCES), model_writer=writer,
      model_type="bpe", vocab_size=400, byte_fallback=True,
      normalization_rule_name="identity", remove_extra_whitespaces=False,
      split_digits=True, num_threads=1, minloglevel=2, **kwargs)
  return writer.getvalue()


def llama_dir(path, legacy: bool = True, image: bool = True) -> str:
  """LLaMA / Vicuna-like: tokenizer.model (unk 0, bos 1, eos 2, no pad), a
  LlamaTokenizer config; `<image>` added as a special token (llava-hf)."""
  os.makedirs(path, exist_ok=True)
  model = os.path.join(path, "tokenizer.model")
  with open(model, "wb") as f:
    f.write(_train_sp(unk_id=0, bos_id=1, eos_id=2, pad_id=-1))
  tok = transformers.LlamaTokenizer(vocab_file=model, legacy=legacy,
                                    chat_template=VICUNA_JINJA)
  if image:
    tok.add_special_tokens({"additional_special_tokens": ["<image>"]})
  tok.save_pretrained(str(path))
  return str(path)


def gemma_dir(path, fast: bool = False) -> str:
  """Gemma-like: pad 0, eos 1, bos 2, unk 3, turn markers as user-defined
  pieces, no dummy prefix; fast=True writes tokenizer.json too."""
  os.makedirs(path, exist_ok=True)
  model = os.path.join(path, "tokenizer.model")
  with open(model, "wb") as f:
    f.write(_train_sp(pad_id=0, eos_id=1, bos_id=2, unk_id=3,
                      pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
                      unk_piece="<unk>", add_dummy_prefix=False,
                      user_defined_symbols=["<start_of_turn>",
                                            "<end_of_turn>"]))
  cls = (transformers.GemmaTokenizerFast if fast
         else transformers.GemmaTokenizer)
  tok = cls(vocab_file=model, chat_template=GEMMA_JINJA)
  tok.save_pretrained(str(path))
  return str(path)
