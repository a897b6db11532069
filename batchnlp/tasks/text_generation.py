"""Text generation with decoder-only models (GPT-2, Llama, SmolLM, ...).

Prompts are left-padded, so every new token follows its prompt directly, and sorted by length like
any other task; the budget counts prompt plus new tokens. With `chat_template`, the text becomes
the user message of the model's chat template (after an optional system prompt).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks import decoding, likelihood, refill
from batchnlp.tasks.bench_hooks import Baseline, make_pipeline
from batchnlp.tasks.base import Feature, RowError


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
    continuous_batching: bool = doc("Greedy decoding keeps its batch full: as rows end, waiting prompts of the "
                                    "shard are prefilled and merged in (false: a batch decodes until its longest "
                                    "row ends, then the next starts). The texts are the same either way; the "
                                    "output's parts record the mean rows per decode step (occupancy).",
                                    default=True)

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


class TextGeneration(decoding.Generative):
    name = "text-generation"
    description = "Continue each text, or answer it as a chat prompt (AutoModelForCausalLM)."
    model_class = "AutoModelForCausalLM"
    padding_side = "left"
    takes_messages = True
    #: Set by prepare(): whether batchnlp's greedy loop stands in for model.generate.
    own_greedy = False

    def setup(self) -> None:
        super().setup()
        if self.params.chat_template and not self.tokenizer.chat_template:
            raise SpecError("task.chat_template", "this model's tokenizer has no chat template")
        if self.new_tokens >= self.max_length:
            raise SpecError("task.max_new_tokens", f"must be below max_length ({self.max_length}), which bounds "
                                                   "prompt plus generated tokens")

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return ["generated_text"] + (["flag"] if cls.guarded(params) else [])

    def column_types(self) -> dict[str, pa.DataType]:
        return {"generated_text": pa.string() if self.params.num_return_sequences == 1 else pa.list_(pa.string()),
                "flag": pa.string()}

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        encoded = decoding.prompt_ids(self.tokenizer, rows, self._prompt, self.params.chat_template)
        room = self.max_length - self.new_tokens
        # Too long a prompt loses its beginning, never its end: the end is what is continued.
        return [e if isinstance(e, RowError) else [{"input_ids": e[-room:], "meta": None}] for e in encoded]

    def _prompt(self, text: str) -> str:
        params = self.params
        return decoding.build_prompt(self.tokenizer, params.prompt_template, text, params.chat_template,
                                     params.system_prompt)

    def baseline(self, model: Any, texts: list[str], batch_size: int) -> Baseline:
        """The tutorial loop: one prompt at a time, greedy."""
        pipe = make_pipeline("text-generation", model, self.tokenizer)
        params = self.params

        def generate() -> list[dict[str, Any]]:
            out = []
            for text in texts:
                prompt: Any = params.prompt_template.replace("{text}", text)
                if params.chat_template:
                    prompt = ([{"role": "system", "content": params.system_prompt}] if params.system_prompt
                              else []) + [{"role": "user", "content": prompt}]
                result = pipe(prompt, max_new_tokens=self.new_tokens, do_sample=False, return_full_text=False)
                generated = result[0]["generated_text"]
                if isinstance(generated, list):  # chat input: the conversation, the reply last
                    generated = generated[-1]["content"]
                out.append({"generated_text": decoding.cut_at_stop(generated, params.stop)})
            return out

        return Baseline(generate, "pipeline (per prompt, float32)", batches_features=False)

    def prepare(self, model: Any) -> None:
        self.own_greedy = decoding.own_greedy(model, self.params) is None
        self.groups_by_length = self.own_greedy  # its greedy loop prefills in groups (decoding.prefill_in_groups)
        self.streams = self.own_greedy  # its greedy loop runs the shard's prompts as one stream
        self.eos = decoding.eos_ids(model)
        self.prefix = likelihood.PrefixCache()
        self.occupancy = refill.Occupancy()

    def forward_stream(self, model: Any, features: list[tuple[int, Feature]], capacity: int
                       ) -> Iterator[tuple[int, Any]]:
        self.occupancy = refill.Occupancy()
        ending = refill.Ending(self.new_tokens, self.eos, self.params.stop, self.tokenizer)
        prompts = [(i, feature["input_ids"]) for i, feature in features]
        for i, tokens, _ in refill.decode(model, prompts, capacity, ending, self.prefix, self.occupancy,
                                          refill=self.params.continuous_batching):
            self.occupancy.made += len(tokens)
            text = self.tokenizer.decode(tokens, skip_special_tokens=True)
            yield i, ([decoding.cut_at_stop(text, self.params.stop)], [None])

    def shard_figures(self) -> dict[str, Any]:
        return self.occupancy.figures()

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        """model.generate on a padded batch: sampling, beam search, a generation config that greedy
        decoding alone cannot honour (batchnlp's own greedy loop is `forward_stream`)."""
        kwargs = decoding.generate_kwargs(self.params)
        kwargs.update(max_new_tokens=self.new_tokens, num_return_sequences=self.params.num_return_sequences,
                      pad_token_id=self.tokenizer.pad_token_id)
        if self.params.stop:
            kwargs.update(stop_strings=list(self.params.stop), tokenizer=self.tokenizer)
        prompt = batch["input_ids"].shape[1]
        sequences, flags = self.generate(model, batch, prompt, **kwargs)
        texts = self.tokenizer.batch_decode(sequences[:, prompt:], skip_special_tokens=True)
        n = self.params.num_return_sequences
        return [([decoding.cut_at_stop(t, self.params.stop) for t in texts[i * n:(i + 1) * n]],
                 flags[i * n:(i + 1) * n]) for i in range(len(meta))]

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        text = row["text"] if isinstance(row["text"], str) else decoding.last_user_message(row["text"])
        prompt = self.params.prompt_template.replace("{text}", text)
        texts, flag = self.guard(*outputs[0])
        texts = [prompt + t if self.params.return_full_text else t for t in texts]
        return {"generated_text": texts[0] if self.params.num_return_sequences == 1 else texts, "flag": flag}


TASK = TextGeneration
