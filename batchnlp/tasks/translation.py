"""Translation with an encoder-decoder model, doing what each model family needs:

- Marian (Helsinki-NLP/opus-mt-*): one model per language pair, nothing to set.
- T5: a task prefix, "translate English to German: ", from the config's task_specific_params when
  it has one for the pair, else built from the language names.
- mBART-50, NLLB: the tokenizer's `src_lang`, and the target language code forced as the first
  generated token; M2M100 the same with its own language ids.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks import decoding
from batchnlp.tasks.seq2seq import Seq2Seq

LANGUAGE_NAMES = {"en": "English", "de": "German", "fr": "French", "ro": "Romanian", "es": "Spanish",
                  "it": "Italian", "pt": "Portuguese", "nl": "Dutch", "ru": "Russian", "zh": "Chinese",
                  "ja": "Japanese"}
FORCED_BOS_FAMILIES = ("mbart", "nllb", "m2m_100")


@dataclass(frozen=True)
class Params(decoding.DecodingParams):
    src_lang: str | None = doc("Source language: a code as the model knows it (en, en_XX, eng_Latn).",
                               default=None)
    tgt_lang: str | None = doc("Target language, likewise (de, de_DE, deu_Latn).", default=None)


class Translation(Seq2Seq):
    name = "translation"
    description = "Translate each text (AutoModelForSeq2SeqLM); output translation_text."
    output_column = "translation_text"

    def task_prefix(self) -> str:
        return self._t5_prefix(self.config) if self.config.model_type == "t5" else ""

    def generate_options(self) -> dict[str, Any]:
        family = self.config.model_type
        if family in FORCED_BOS_FAMILIES or "nllb" in type(self.tokenizer).__name__.lower():
            return {"forced_bos_token_id": self._forced_language(self.tokenizer, family)}
        return {}

    def _require_languages(self, family: str) -> None:
        for key in ("src_lang", "tgt_lang"):
            if getattr(self.params, key) is None:
                raise SpecError(f"task.{key}", f"required for a {family} translation model")

    def _t5_prefix(self, config: Any) -> str:
        self._require_languages("T5")
        src, tgt = self.params.src_lang, self.params.tgt_lang
        specific = (getattr(config, "task_specific_params", None) or {}).get(f"translation_{src}_to_{tgt}")
        if specific and specific.get("prefix"):
            return specific["prefix"]
        return f"translate {LANGUAGE_NAMES.get(src, src)} to {LANGUAGE_NAMES.get(tgt, tgt)}: "

    def _forced_language(self, tokenizer: Any, family: str) -> int:
        """Set the tokenizer's source language; the target language's token id."""
        self._require_languages(family)
        tokenizer.src_lang = self.params.src_lang
        if family == "m2m_100":
            target = tokenizer.get_lang_id(self.params.tgt_lang)
        else:
            target = tokenizer.convert_tokens_to_ids(self.params.tgt_lang)
        if target is None or target == tokenizer.unk_token_id:
            raise SpecError("task.tgt_lang", f"{self.params.tgt_lang!r} is not a language code of this model")
        return target


TASK = Translation
