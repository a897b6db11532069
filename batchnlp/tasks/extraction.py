"""Structured extraction with an instruction LLM: for each text, the fields a JSON Schema declares,
one typed Parquet column per top-level property (or one struct column), the answer's JSON kept
in `raw_json` for audit.

Decoding is constrained (tasks/constraint.py): at each step a row may only take tokens that keep
its answer a prefix of JSON under the schema, so every row either ends with a valid answer —
checked once more against the schema (jsonschema) before its values are typed — or is an error
row saying why: `cut: max_new_tokens (96) reached inside "summary"` (the partial answer kept in
`raw_json`). Rows decode in a batch kept full as rows end (tasks/refill.py), greedily or by
sampling; reruns write the same bytes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import pyarrow as pa

from batchnlp.errors import SpecError
from batchnlp.settings import doc
from batchnlp.tasks import decoding, json_schema, likelihood, refill
from batchnlp.tasks.base import Feature, RowError, Task

RAW = "raw_json"


@dataclass(frozen=True)
class Params:
    schema: dict[str, Any] = doc("Required: the JSON Schema of each answer, `type: object` whose `properties` are strings "
                                 "(enum, maxLength, minLength, pattern), integers and numbers (minimum, maximum), "
                                 "booleans, nulls, and arrays of those (items, maxItems, minItems); `required` "
                                 "names those every answer has. One column per property.", default=None)
    prompt_template: str = doc("The prompt made from each text; {text} marks where the text goes, {schema} where "
                               "the schema goes (as JSON), if the model should read it.", default="{text}")
    chat_template: bool = doc("Wrap the prompt as the user message of the model's chat template (instruction "
                              "models expect it).", default=True)
    system_prompt: str | None = doc("With chat_template: a system message before the user message.", default=None)
    max_new_tokens: int = doc("Most tokens an answer may take; an answer not complete by then is an error row "
                              "(`cut: ...`).", default=256)
    struct: bool = doc("One struct column `extracted` holding the fields, instead of a column per property.",
                       default=False)
    constrained: bool = doc("Decode under the schema's grammar (false: free text, then parsed from its first "
                            "`{` and checked: to measure what the constraint buys).", default=True)
    continuous_batching: bool = doc("Keep the decoding batch full: as rows end, waiting prompts of the shard "
                                    "are prefilled and merged in.", default=True)
    do_sample: bool = doc("Sample instead of greedy decoding (the grammar still applies).", default=False)
    temperature: float | None = doc("Sampling temperature.", default=None)
    top_p: float | None = doc("Nucleus sampling mass.", default=None)
    top_k: int | None = doc("Sample among the k most likely tokens.", default=None)
    seed: int = doc("Seed for sampling; shard i uses seed + i, so a rerun or a resumed run samples the same.",
                    default=0)

    def validate(self) -> None:
        if self.schema is None:
            raise SpecError("task.schema", "required: the JSON Schema of the fields to extract")
        if "{text}" not in self.prompt_template:
            raise SpecError("task.prompt_template", "must contain {text} where each row's text goes")
        if self.system_prompt is not None and not self.chat_template:
            raise SpecError("task.system_prompt", "only applies with chat_template: true")
        if self.max_new_tokens < 1:
            raise SpecError("task.max_new_tokens", "must be 1 or more")
        if self.temperature is not None and self.temperature <= 0:
            raise SpecError("task.temperature", "must be above 0 (for greedy decoding set do_sample: false)")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise SpecError("task.top_p", "must be in (0, 1]")
        if self.top_k is not None and self.top_k < 1:
            raise SpecError("task.top_k", "must be 1 or more")
        if not self.do_sample and any(v is not None for v in (self.temperature, self.top_p, self.top_k)):
            raise SpecError("task.do_sample", "temperature, top_p and top_k only apply with do_sample: true")
        json_schema.check(self.schema)
        if RAW in self.schema["properties"] or (self.struct and "extracted" in self.schema["properties"]):
            raise SpecError("task.schema.properties", f"{RAW!r} and 'extracted' name batchnlp's own columns; "
                                                      "rename the property")

    @property
    def closed(self) -> dict[str, Any]:
        """The schema with no properties but the declared ones (the columns), as decoded and checked."""
        return {**self.schema, "additionalProperties": False}


class Extraction(Task):
    name = "extraction"
    description = "Fields under a JSON Schema from each text, decoded under its grammar (AutoModelForCausalLM)."
    model_class = "AutoModelForCausalLM"
    padding_side = "left"
    takes_messages = True
    groups_by_length = True  # prompts prefill in groups of similar length (decoding.prefill_in_groups)
    agreement_threshold = 0.95  # as text-generation: another precision may part ways after a near-tie

    def setup(self) -> None:
        if self.params.chat_template and not self.tokenizer.chat_template:
            raise SpecError("task.chat_template", "this model's tokenizer has no chat template; set chat_template: "
                                                  "false and write the whole prompt in prompt_template")
        if self.params.max_new_tokens >= self.max_length:
            raise SpecError("task.max_new_tokens", f"must be below max_length ({self.max_length}), which bounds "
                                                   "prompt plus answer")
        self.new_tokens = self.params.max_new_tokens
        self.check = json_schema.validator(self.params.closed)
        self.schema_text = json.dumps(self.params.closed)

    @classmethod
    def columns(cls, params: Params) -> list[str]:
        return (["extracted"] if params.struct else list(params.schema["properties"])) + [RAW]

    def column_types(self) -> dict[str, pa.DataType]:
        properties = self.params.schema["properties"]
        types = {name: json_schema.arrow_type(prop) for name, prop in properties.items()}
        if self.params.struct:
            types = {"extracted": pa.struct(self._property_fields())}
        return {**types, RAW: pa.string()}

    def _property_fields(self) -> list[pa.Field]:
        return [pa.field(name, json_schema.arrow_type(prop), metadata=json_schema.field_metadata(prop))
                for name, prop in self.params.schema["properties"].items()]

    def fields(self) -> list[pa.Field]:
        if self.params.struct:
            return super().fields()
        raw = pa.field(RAW, pa.string(), metadata={b"json_schema": self.schema_text.encode()})
        return self._property_fields() + [raw]

    def encode(self, rows: Sequence[dict[str, Any]]) -> list[list[Feature] | RowError]:
        params = self.params
        encoded = decoding.prompt_ids(self.tokenizer, rows, lambda text: decoding.build_prompt(
            self.tokenizer, params.prompt_template, text, params.chat_template, params.system_prompt,
            schema=self.schema_text), params.chat_template)
        room = self.max_length - self.new_tokens
        out: list[list[Feature] | RowError] = []
        for ids in encoded:
            # The text sits inside the prompt: cutting it would lose the instruction or the text's
            # end without saying so. Said instead.
            out.append(ids if isinstance(ids, RowError) else [{"input_ids": ids, "meta": None}] if len(ids) <= room
                       else RowError(f"prompt too long: {len(ids)} tokens, room for {room} (max_length "
                                     f"{self.max_length} less max_new_tokens {self.new_tokens})"))
        return out

    def batch_length(self, feature: Feature) -> int:
        return len(feature["input_ids"]) + self.new_tokens

    def batch_overhead_tokens(self) -> int:
        return decoding.Generative.batch_overhead_tokens(self)  # a forward per new token: big batches

    def prepare(self, model: Any) -> None:
        from batchnlp.tasks import constraint

        self.streams = True
        self.eos = decoding.eos_ids(model)
        self.prefix = likelihood.PrefixCache()
        self.occupancy = refill.Occupancy()
        vocab = model.get_output_embeddings().out_features
        self.grammar = constraint.Grammar(self.params.closed, self.tokenizer, vocab, self.eos) \
            if self.params.constrained else None
        self.seed_offset = 0

    def start_shard(self, index: int) -> None:
        self.seed_offset = index

    def forward(self, model: Any, batch: dict[str, Any], meta: list[Any]) -> list[Any]:
        raise NotImplementedError("extraction runs its shards as a stream (forward_stream)")

    def forward_stream(self, model: Any, features: list[tuple[int, Feature]], capacity: int
                       ) -> Iterator[tuple[int, Any]]:
        self.occupancy = refill.Occupancy()
        ending = refill.Ending(self.new_tokens, self.eos, grammar=self.grammar.rows() if self.grammar else None,
                               pick=self._sampler(model) if self.params.do_sample else None)
        prompts = [(i, feature["input_ids"]) for i, feature in features]
        for i, tokens, why in refill.decode(model, prompts, capacity, ending, self.prefix, self.occupancy,
                                            refill=self.params.continuous_batching):
            self.occupancy.made += len(tokens)
            yield i, (self.tokenizer.decode(tokens, skip_special_tokens=True), why)

    def _sampler(self, model: Any) -> Any:
        import torch

        generator = torch.Generator(device=model.device).manual_seed(self.params.seed + self.seed_offset)
        params = self.params

        def pick(logits: Any) -> Any:
            logits = logits.float() / (params.temperature or 1.0)
            if params.top_k:
                kth = logits.topk(min(params.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            if params.top_p is not None and params.top_p < 1:
                ordered, order = logits.sort(dim=-1, descending=True)
                beyond = ordered.softmax(-1).cumsum(-1) - ordered.softmax(-1) >= params.top_p
                logits = logits.masked_fill(beyond.scatter(-1, order, beyond), float("-inf"))
            return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)

        return pick

    def shard_figures(self) -> dict[str, Any]:
        return self.occupancy.figures()

    def agreement_key(self, row: dict[str, Any]) -> Any:
        return row[RAW]  # the whole answer, cut ones included

    def decode(self, row: dict[str, Any], outputs: list[Any]) -> dict[str, Any]:
        text, why = outputs[0]
        kept = {RAW: text}
        if why == "cut" and self.params.constrained:
            raise RowError(f"cut: max_new_tokens ({self.new_tokens}) reached {json_schema.where_cut(text)}", kept)
        try:
            value = json.loads(text) if self.params.constrained else json_schema.first_object(text)
        except ValueError as e:
            raise RowError(f"invalid: not JSON ({e})", kept) from None
        problem = json_schema.problem(self.check, value)
        if problem is not None:
            raise RowError(f"invalid: {problem}", kept)
        fields = {name: _typed(prop, value.get(name)) for name, prop in self.params.schema["properties"].items()}
        if self.params.struct:
            return {"extracted": fields, RAW: text}
        return {**fields, RAW: text}


def _typed(prop: dict[str, Any], value: Any) -> Any:
    # JSON Schema counts 3.0 an integer; an int64 column takes 3 (free-text answers write such numbers)
    if isinstance(value, float) and value.is_integer() and json_schema.value_type(prop) == "integer":
        return int(value)
    return value


TASK = Extraction
