"""Chat templates by name: a conversation -> (token ids, loss mask).

  template = chat_templates.get("chatml")
  ids, mask = template.encode_chat(tok, turns)     # mask: 1 on answers
  prompt = template.prompt_ids(tok, turns[:-1])    # generation prompt

Turns are `{'role': 'user'|'assistant'|'system', 'content': str}` or LLaVA's
`{'from': 'human'|'gpt'|'system', 'value': str}`; a system turn may only
come first. The loss mask is 1 on the assistant's content and its end
marker, 0 elsewhere (the role headers, the system prompt, user turns).

  mmjax      <s><|user|>Q<|end|><|assistant|>A<|end|>       (mmjax's own)
  vicuna_v1  <s>SYSTEM USER: Q ASSISTANT: A</s>USER: ...    (LLaVA-1.5)
  chatml     <|im_start|>system\\nSYSTEM<|im_end|>\\n<|im_start|>user\\nQ
             <|im_end|>\\n<|im_start|>assistant\\nA<|im_end|>\\n   (Qwen2)
  gemma      <bos><start_of_turn>user\\nQ<end_of_turn>\\n
             <start_of_turn>model\\nA<end_of_turn>\\n            (Gemma)

vicuna_v1 and chatml use their default system prompt when the conversation
has none (as LLaVA and Qwen2 do); gemma has no system role and puts a system
turn's text before the first user turn, followed by a blank line (Gemma 3).

The Hugging Face templates (every one but `mmjax`) are rendered to one
string and tokenised once, because real tokenizers merge across the
boundaries of separately encoded pieces: the ids equal transformers'
`apply_chat_template(messages, tokenize=True)` for a tokenizer whose Jinja
template writes the same string. The mask comes from the tokens' character
offsets: a token is an answer token when it overlaps the characters of an
answer or its end marker. The `mmjax` template tokenises each segment on its
own (its markers are single pieces), which is exact by construction.

A template uses from the tokenizer: `encode(text)`, `token_id(text)` (the id
of a token written as text, None if absent), and for rendered templates
`encode_with_offsets(text)` plus `bos_token` / `eos_token` / `special_tokens`.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, Callable, Mapping, Sequence

from mmjax.config import ConfigError

USER_TOKEN = "<|user|>"
ASSISTANT_TOKEN = "<|assistant|>"
END_OF_TURN_TOKEN = "<|end|>"
MMJAX_MARKERS = (USER_TOKEN, ASSISTANT_TOKEN, END_OF_TURN_TOKEN)

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence "
    "assistant. The assistant gives helpful, detailed, and polite answers to "
    "the human's questions.")
CHATML_SYSTEM = "You are a helpful assistant."

# A turn's role (mmjax's and LLaVA's names) -> the template's role.
ROLES = {"user": "user", "human": "user", "assistant": "assistant",
         "gpt": "assistant", "system": "system"}

Turn = tuple[str, str]   # (role: user | assistant | system, content)
Span = tuple[int, int]   # [start, end) characters of the rendered text


def parse_turns(turns: Sequence[Mapping[str, str]]) -> list[Turn]:
  """(role, content) pairs with roles normalised; ValueError if malformed."""
  out = []
  for index, turn in enumerate(turns):
    if "role" in turn:
      role, content = turn["role"], turn.get("content")
    elif "from" in turn:
      role, content = turn["from"], turn.get("value")
    else:
      raise ValueError(f"Turn {index} has neither a 'role' nor a 'from' key: "
                       f"{dict(turn)!r}.")
    if role not in ROLES:
      raise ValueError(f"Turn {index} has unknown role {role!r}; allowed "
                       f"roles: {', '.join(ROLES)}.")
    if not isinstance(content, str):
      raise ValueError(f"Turn {index} ({role}) content must be a str, got "
                       f"{type(content).__name__}.")
    if ROLES[role] == "system" and index:
      raise ValueError(f"Turn {index} is a system turn; only the first turn "
                       "may be one.")
    out.append((ROLES[role], content))
  return out


def _check_reserved(turns: Sequence[Turn], reserved: Sequence[str]) -> None:
  """A reserved token inside content would fake a turn boundary."""
  for index, (role, content) in enumerate(turns):
    for token in reserved:
      if token and token in content:
        raise ValueError(f"Turn {index} ({role}) content contains the chat "
                         f"marker {token!r}, which the template reserves.")


def _check_not_answered(turns: Sequence[Turn]) -> None:
  if turns and turns[-1][0] == "assistant":
    raise ValueError("The last turn is an assistant turn; pass the "
                     "conversation up to the user turn to be answered.")


def _need_token(tok: Any, token: str | None, template: str, what: str) -> int:
  token_id = tok.token_id(token) if token else None
  if token_id is None:
    raise ConfigError(
        f"chat template {template!r} needs the {what} token {token!r}, which "
        f"tokenizer {getattr(tok, 'name', None) or tok!r} does not have; pick "
        "another template "
        f"(config.chat_template: {', '.join(TEMPLATES)})")
  return token_id


@dataclasses.dataclass(frozen=True)
class ChatTemplate(abc.ABC):
  """A named chat format (module docstring); subclasses encode."""
  name: str
  description: str

  def check(self, tok: Any) -> None:
    """ConfigError when `tok` lacks a token the template writes."""
    self.end_of_turn_id(tok)

  @abc.abstractmethod
  def end_of_turn_id(self, tok: Any) -> int:
    """The id that ends an assistant turn (generation stops there)."""

  @abc.abstractmethod
  def encode_chat(self, tok: Any, turns: Sequence[Mapping[str, str]], *,
                  add_bos: bool = True) -> tuple[list[int], list[int]]:
    """(ids, loss_mask) of a conversation, two lists of equal length."""

  @abc.abstractmethod
  def prompt_ids(self, tok: Any, turns: Sequence[Mapping[str, str]], *,
                 add_bos: bool = True) -> list[int]:
    """The ids that prompt the next assistant turn (ends where its answer
    starts). ValueError if the last turn is already an assistant turn."""


@dataclasses.dataclass(frozen=True)
class SegmentTemplate(ChatTemplate):
  """mmjax's template: marker ids and separately encoded contents."""

  def end_of_turn_id(self, tok: Any) -> int:
    return _need_token(tok, END_OF_TURN_TOKEN, self.name, "end-of-turn")

  def _markers(self, tok: Any) -> dict[str, int]:
    return {"user": _need_token(tok, USER_TOKEN, self.name, "user"),
            "assistant": _need_token(tok, ASSISTANT_TOKEN, self.name,
                                     "assistant"),
            "end": self.end_of_turn_id(tok)}

  def check(self, tok: Any) -> None:
    self._markers(tok)

  def encode_chat(self, tok, turns, *, add_bos=True):
    parsed = parse_turns(turns)
    if parsed and parsed[0][0] == "system":
      raise ValueError(
          f"Turn 0 has role {turns[0].get('role', turns[0].get('from'))!r}, "
          f"which chat template {self.name!r} does not have; allowed roles: "
          "user, assistant, human, gpt (or pick another template).")
    _check_reserved(parsed, MMJAX_MARKERS)
    ids = self._markers(tok)
    out = [tok.bos_id] if add_bos and tok.bos_id is not None else []
    mask = [0] * len(out)
    for role, content in parsed:
      body = tok.encode(content) + [ids["end"]]
      out += [ids[role]] + body
      mask += [0] + [int(role == "assistant")] * len(body)
    return out, mask

  def prompt_ids(self, tok, turns, *, add_bos=True):
    _check_not_answered(parse_turns(turns))
    ids, _ = self.encode_chat(tok, turns, add_bos=add_bos)
    return ids + [self._markers(tok)["assistant"]]


class _Text:
  """A rendered string with the character spans that carry the loss."""

  def __init__(self):
    self.parts: list[str] = []
    self.spans: list[Span] = []
    self.size = 0

  def add(self, text: str, loss: bool = False) -> None:
    if loss and text:
      self.spans.append((self.size, self.size + len(text)))
    self.parts.append(text)
    self.size += len(text)

  @property
  def text(self) -> str:
    return "".join(self.parts)


# Render: (tokenizer, parsed turns, add_bos, add_generation_prompt) -> text.
Render = Callable[[Any, Sequence[Turn], bool, bool], _Text]


@dataclasses.dataclass(frozen=True)
class RenderedTemplate(ChatTemplate):
  """A Hugging Face style template: rendered once, tokenised once."""
  render: Render = None
  end_marker: Callable[[Any], str | None] = None   # tok -> end token text
  markers: tuple[str, ...] = ()                     # other tokens it writes

  def end_of_turn_id(self, tok: Any) -> int:
    return _need_token(tok, self.end_marker(tok), self.name, "end-of-turn")

  def check(self, tok: Any) -> None:
    self.end_of_turn_id(tok)
    for marker in self.markers:
      _need_token(tok, marker, self.name, "marker")

  def _encode(self, tok, turns, add_bos, generation):
    parsed = parse_turns(turns)
    self.check(tok)
    reserved = sorted((set(tok.special_tokens) | set(self.markers) |
                       {self.end_marker(tok)}) - {tok.image_token})
    _check_reserved(parsed, reserved)
    if generation:
      _check_not_answered(parsed)
    rendered = self.render(tok, parsed, add_bos, generation)
    ids, offsets = tok.encode_with_offsets(rendered.text)
    return ids, [int(_overlaps(o, rendered.spans)) for o in offsets]

  def encode_chat(self, tok, turns, *, add_bos=True):
    return self._encode(tok, turns, add_bos, False)

  def prompt_ids(self, tok, turns, *, add_bos=True):
    return self._encode(tok, turns, add_bos, True)[0]


def _overlaps(offset: Span, spans: Sequence[Span]) -> bool:
  """Whether a token's [start, end) characters touch a loss span; a
  zero-width token (a byte-fallback piece) counts where it starts."""
  start, end = offset
  if start == end:
    return any(a <= start < b for a, b in spans)
  return any(start < b and end > a for a, b in spans)


def _bos(tok: Any, add_bos: bool) -> str:
  return tok.bos_token if add_bos and tok.bos_token else ""


def _render_vicuna(tok, turns, add_bos, generation) -> _Text:
  """LLaVA's conv_vicuna_v1: `SYSTEM USER: Q ASSISTANT: A</s>USER: ...`."""
  out = _Text()
  system = turns[0][1] if turns and turns[0][0] == "system" else VICUNA_SYSTEM
  out.add(_bos(tok, add_bos) + system + " ")
  for role, content in turns:
    if role == "user":
      out.add(f"USER: {content} ")
    elif role == "assistant":
      out.add("ASSISTANT: ")
      out.add(content + tok.eos_token, loss=True)
  if generation:
    out.add("ASSISTANT:")
  return out


def _render_chatml(tok, turns, add_bos, generation) -> _Text:
  """Qwen2's ChatML, with its default system prompt."""
  del add_bos  # ChatML has no bos.
  out = _Text()
  if not turns or turns[0][0] != "system":
    out.add(f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n")
  for role, content in turns:
    out.add(f"<|im_start|>{role}\n")
    out.add(content + "<|im_end|>", loss=role == "assistant")
    out.add("\n")
  if generation:
    out.add("<|im_start|>assistant\n")
  return out


def _render_gemma(tok, turns, add_bos, generation) -> _Text:
  """Gemma's turns; a system turn's text leads the first user turn."""
  out = _Text()
  out.add(_bos(tok, add_bos))
  prefix = ""
  for role, content in turns:
    if role == "system":
      prefix = content + "\n\n"
      continue
    if role == "user":
      out.add(f"<start_of_turn>user\n{prefix}{content}<end_of_turn>\n")
      prefix = ""
    else:
      out.add("<start_of_turn>model\n")
      out.add(content + "<end_of_turn>", loss=True)
      out.add("\n")
  if generation:
    out.add("<start_of_turn>model\n")
  return out


TEMPLATES: dict[str, ChatTemplate] = {}


def register(template: ChatTemplate) -> ChatTemplate:
  """Adds a template to `TEMPLATES` under its name."""
  TEMPLATES[template.name] = template
  return template


MMJAX = register(SegmentTemplate(
    "mmjax", "<s><|user|>Q<|end|><|assistant|>A<|end|> (the shapes recipe's)"))
register(RenderedTemplate(
    "chatml", "Qwen2: <|im_start|>role\\ncontent<|im_end|>\\n",
    render=_render_chatml, end_marker=lambda tok: "<|im_end|>",
    markers=("<|im_start|>",)))
register(RenderedTemplate(
    "gemma", "Gemma: <start_of_turn>role\\ncontent<end_of_turn>\\n",
    render=_render_gemma, end_marker=lambda tok: "<end_of_turn>",
    markers=("<start_of_turn>",)))

register(RenderedTemplate(
    "vicuna_v1", "LLaVA-1.5 / Vicuna: SYSTEM USER: Q ASSISTANT: A</s>",
    render=_render_vicuna, end_marker=lambda tok: tok.eos_token))

def guess(tok: Any) -> ChatTemplate:
  """The first template (registration order: the ones with their own
  markers before vicuna_v1, which needs only eos) that `tok` can write."""
  for template in TEMPLATES.values():
    try:
      template.check(tok)
    except ConfigError:
      continue
    return template
  name = getattr(tok, "name", None) or repr(tok)
  raise ConfigError(f"tokenizer {name} can write none of the chat "
                    f"templates {', '.join(TEMPLATES)}")


def get(name: str) -> ChatTemplate:
  """The template named `name`; ConfigError listing the names otherwise."""
  if name not in TEMPLATES:
    raise ConfigError(f"config.chat_template={name!r} is not a chat "
                      f"template; allowed values: {', '.join(TEMPLATES)}")
  return TEMPLATES[name]
