"""Text generation with decoder-only models (GPT-2, Llama, SmolLM, ...).

Prompts are left-padded, so every new token follows its prompt directly, and sorted by length like
any other task; the budget counts prompt plus new tokens. With `chat_template`, the text becomes
the user message of the model's chat template (after an optional system prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.spec import doc
from batchnlp.tasks import decoding
from batchnlp.tasks.base import Feature, RowError, Task


@dataclass(frozen=True)
class Params(decoding.DecodingParams):
    max_new_tokens: int | None = doc("Most tokens to generate.", default=64)
    num_return_sequences: int = doc("Texts per prompt; above 1, `generated_text` is a list.", default=1)
    stop: list[str] | None = doc("Stop generating at any of these strings (left out of the output).",
                                 default=None)
    prompt_template: str = doc("The prompt made from each text; {text} marks where the text goes.",
                               default="{text}")
    return_full_text: bool = doc("Prepend the prompt (the text through prompt_template; without the chat "
                                 "template's markup) to the generated text.", default=False)
    chat_template: bool = doc("Wrap the text as the user message of the model's chat template.", default=False)
    system_prompt: str | None = doc("With chat_template: a system message before the user message.",
                                    default=None)

    def validate(self) -> None:
        super().validate()
        if self.num_return_sequences < 1:
            raise SpecError("task.num_return_sequences", "must be 1 or more")
        if "{text}" not in self.prompt_template:
            raise SpecError("task.prompt_template", "must contain {text} where each row's text goes")
        if self.system_prompt is not None and not self.chat_template:
            raise SpecError("task.system_prompt", "only applies with chat_template: true")
        if self.num_return_sequences > 1 and not self.do_sample and (self.num_beams or 1) < self.num_return_sequences:
            raise SpecError("task.num_return_sequences", "above 1 needs do_sample: true or num_beams >= it")


class TextGeneration(Task):
    name = "text-generation"
    description = "Continue each text, or answer it as a chat prompt (AutoModelForCausalLM)."
    Params = Params
    model_class = "AutoModelForCausalLM"
    padding_side = "left"
    # Greedy text from another precision may part ways with float32's after a near-tie; 95% of
    # texts identical is the bar.
    agreement_threshold = 0.95

    def __init__(self, params: Params, model_config: Any, tokenizer: Any, max_length: int):
        super().__init__(params, model_config, tokenizer, max_length)
        if params.chat_template and not tokenizer.chat_template:
            raise SpecError("task.chat_template", "this model's tokenizer has no chat template")
        self.new_tokens = decoding.new_tokens(params, None)
        if self.new_tokens >= max_length:
            raise SpecError("task.max_new_tokens", f"must be below max_length ({max_length}), which bounds "
                                                   "prompt plus generated tokens")

    def fields(self) -> list[pa.Field]:
        kind = pa.string() if self.params.num_return_sequences == 1 else pa.list_(pa.string())
        return [pa.field("generated_text", kind)]

    def start_shard(self, index: int) -> None:
        decoding.seed_shard(self.params.seed, index)

    def batch_length(self, feature: Feature) -> int:
        return len(feature["input_ids"]) + self.new_tokens

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        prompts = [self._prompt(row["text"]) for row in rows]
        # A chat template writes its own special tokens; plain text gets the tokenizer's.
        enc = self.tokenizer(prompts, add_special_tokens=not self.params.chat_template, return_attention_mask=False)
        room = self.max_length - self.new_tokens
        # Too long a prompt loses its beginning, never its end: the end is what is continued.
        return [[{"input_ids": ids[-room:], "meta": None}] for ids in enc["input_ids"]]

    def _prompt(self, text: str) -> str:
        # str.replace, not format: the text and the template may hold braces of their own.
        text = self.params.prompt_template.replace("{text}", text)
        if not self.params.chat_template:
            return text
        messages = ([{"role": "system", "content": self.params.system_prompt}] if self.params.system_prompt else [])
        messages.append({"role": "user", "content": text})
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        kwargs = decoding.generate_kwargs(self.params)
        kwargs.update(max_new_tokens=self.new_tokens, num_return_sequences=self.params.num_return_sequences,
                      pad_token_id=self.tokenizer.pad_token_id)
        if self.params.stop:
            kwargs.update(stop_strings=list(self.params.stop), tokenizer=self.tokenizer)
        sequences = model.generate(**batch, **kwargs)
        texts = self.tokenizer.batch_decode(sequences[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        n = self.params.num_return_sequences
        return [[decoding.cut_at_stop(t, self.params.stop) for t in texts[i * n:(i + 1) * n]]
                for i in range(len(meta))]

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        prompt = self.params.prompt_template.replace("{text}", row["text"])
        texts = [prompt + t if self.params.return_full_text else t for t in outputs[0]]
        return {"generated_text": texts[0] if self.params.num_return_sequences == 1 else texts}


TASK = TextGeneration
