"""The answer normalisation of the official VQA evaluation (`vqaEval.py` of
GT-Vision-Lab/VQA, also the EvalAI server's and TextVQA's).

  normalize_answer("Two dogs.")   # -> '2 dogs'
  normalize_answer("a tree")      # -> 'tree'
  normalize_answer("1,000")       # -> '1000'

Steps, in the official order:
1. newlines and tabs -> spaces, outer whitespace stripped;
2. punctuation: each mark of PUNCTUATION is deleted when it touches a space
   ("hi, there") or when the text holds a comma between digits ("1,000"),
   else replaced by a space ("black-white" -> "black white"); a period is
   deleted unless a digit follows it ("2.5" stays, "dog." -> "dog");
   apostrophes are kept ("dog's");
3. lower case; the number words zero..ten (and "none") -> digits; the
   articles a / an / the dropped; contractions written without their
   apostrophe restored ("dont" -> "don't", CONTRACTIONS).
"""
from __future__ import annotations

import re

PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
               "_", "-", ">", "<", "@", "`", ",", "?", "!")
NUMBER_WORDS = {"none": "0", "zero": "0", "one": "1", "two": "2",
                "three": "3", "four": "4", "five": "5", "six": "6",
                "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = frozenset({"a", "an", "the"})

_DIGIT_COMMA_DIGIT = re.compile(r"\d,\d")
# vqaEval.py's pattern reads "(?!<=\d)(\.)(?!\d)": its first group is a
# (mistyped) lookahead that always holds, so in effect a period is removed
# wherever no digit follows it.
_PERIOD_NOT_BEFORE_DIGIT = re.compile(r"\.(?!\d)")


# The official table: a form without (some of) its apostrophes -> the
# written one. Its capitalised keys ("Im", "Ive", "Id've", ...) are left
# out: the official code looks words up after lower-casing, so they never
# match. One entry is reversed in the official table and kept so.
_CONTRACTION_PAIRS = """
aint:ain't arent:aren't cant:can't couldve:could've couldnt:couldn't
couldn'tve:couldn't've couldnt've:couldn't've didnt:didn't doesnt:doesn't
dont:don't hadnt:hadn't hadnt've:hadn't've hadn'tve:hadn't've hasnt:hasn't
havent:haven't hed:he'd hed've:he'd've he'dve:he'd've hes:he's howd:how'd
howll:how'll hows:how's isnt:isn't itd:it'd itd've:it'd've it'dve:it'd've
itll:it'll let's:let's maam:ma'am mightnt:mightn't mightnt've:mightn't've
mightn'tve:mightn't've mightve:might've mustnt:mustn't mustve:must've
neednt:needn't notve:not've oclock:o'clock oughtnt:oughtn't
ow's'at:'ow's'at 'ows'at:'ow's'at 'ow'sat:'ow's'at shant:shan't
shed've:she'd've she'dve:she'd've she's:she's shouldve:should've
shouldnt:shouldn't shouldnt've:shouldn't've shouldn'tve:shouldn't've
somebody'd:somebodyd somebodyd've:somebody'd've somebody'dve:somebody'd've
somebodyll:somebody'll somebodys:somebody's someoned:someone'd
someoned've:someone'd've someone'dve:someone'd've someonell:someone'll
someones:someone's somethingd:something'd somethingd've:something'd've
something'dve:something'd've somethingll:something'll thats:that's
thered:there'd thered've:there'd've there'dve:there'd've therere:there're
theres:there's theyd:they'd theyd've:they'd've they'dve:they'd've
theyll:they'll theyre:they're theyve:they've twas:'twas wasnt:wasn't
wed've:we'd've we'dve:we'd've weve:we've werent:weren't whatll:what'll
whatre:what're whats:what's whatve:what've whens:when's whered:where'd
wheres:where's whereve:where've whod:who'd whod've:who'd've who'dve:who'd've
wholl:who'll whos:who's whove:who've whyll:why'll whyre:why're whys:why's
wont:won't wouldve:would've wouldnt:wouldn't wouldnt've:wouldn't've
wouldn'tve:wouldn't've yall:y'all yall'll:y'all'll y'allll:y'all'll
yall'd've:y'all'd've y'alld've:y'all'd've y'all'dve:y'all'd've youd:you'd
youd've:you'd've you'dve:you'd've youll:you'll youre:you're youve:you've
"""
CONTRACTIONS = dict(pair.split(":") for pair in _CONTRACTION_PAIRS.split())


def strip_punctuation(text: str) -> str:
  """Step 2 of the module docstring (vqaEval.processPunctuation)."""
  out = text
  delete_all = _DIGIT_COMMA_DIGIT.search(text) is not None
  for mark in PUNCTUATION:
    if delete_all or mark + " " in text or " " + mark in text:
      out = out.replace(mark, "")
    else:
      out = out.replace(mark, " ")
  return _PERIOD_NOT_BEFORE_DIGIT.sub("", out)


def digits_and_articles(text: str) -> str:
  """Step 3 of the module docstring (vqaEval.processDigitArticle)."""
  words = [NUMBER_WORDS.get(w, w) for w in text.lower().split()]
  words = [CONTRACTIONS.get(w, w) for w in words if w not in ARTICLES]
  return " ".join(words)


def normalize_answer(text: str) -> str:
  """An answer as the official VQA evaluation compares it (module doc)."""
  text = text.replace("\n", " ").replace("\t", " ").strip()
  return digits_and_articles(strip_punctuation(text))
