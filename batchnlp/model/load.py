"""Loading the config, tokenizer and model from a resolved directory onto the chosen device and
precision. Kept apart from running the model (as crossfit does)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from batchnlp.errors import ModelUnavailableError
from batchnlp.log import no_load_report
from batchnlp.model.attention import use_grouped_attention
from batchnlp.model.device import Placement
from batchnlp.model.source import ResolvedModel


def _kwargs(resolved: ResolvedModel, trust_remote_code: bool) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if resolved.gguf_file:
        kwargs["gguf_file"] = resolved.gguf_file
    return kwargs


def _fail(what: str, resolved: ResolvedModel, error: Exception) -> ModelUnavailableError:
    hint = ""
    if resolved.gguf_file and isinstance(error, ImportError):
        hint = " (GGUF checkpoints need the gguf and accelerate packages: pip install -e '.[gguf]')"
    return ModelUnavailableError(f"model: cannot load the {what} from {resolved.directory}: "
                                 f"{str(error).splitlines()[0] if str(error) else type(error).__name__}{hint}")


def load_config(resolved: ResolvedModel, trust_remote_code: bool) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(resolved.directory, **_kwargs(resolved, trust_remote_code))
    except (OSError, ValueError, ImportError) as e:
        raise _fail("config", resolved, e) from None


def load_tokenizer(resolved: ResolvedModel, trust_remote_code: bool) -> Any:
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.directory, **_kwargs(resolved, trust_remote_code))
    except (OSError, ValueError, ImportError, TypeError) as e:
        raise _fail("tokenizer", resolved, e) from None
    if len(tokenizer) - len(tokenizer.all_special_tokens) < 10:
        # transformers builds a tokenizer with an empty vocabulary when the files are missing:
        # every word would be [UNK] and every row get the same answer.
        raise ModelUnavailableError(f"model: the tokenizer in {resolved.directory} has an empty vocabulary "
                                    f"({len(tokenizer)} tokens); copy the tokenizer files (tokenizer.json, "
                                    "vocab.txt, ...) from the model's repository")
    if tokenizer.pad_token is None:
        # Decoder-only models (GPT-2, Llama) ship no pad token; any id works since padded
        # positions are masked out, and the end-of-sequence token is the usual choice.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(resolved: ResolvedModel, model_class: str, placement: Placement, trust_remote_code: bool,
               allow_missing_weights: bool = False, packed: bool = True) -> Any:
    """The model on its device and precision. Weights the class needs but the checkpoint lacks
    (a classifier head on a bare encoder) would be random: that stops the job unless allowed.
    `packed`: its linear layers packed for oneDNN where the placement calls for it (model.kernels);
    false for the bench's float32 reference and pipeline baseline, torch's own layers."""
    import transformers

    try:
        with no_load_report():
            model, info = getattr(transformers, model_class).from_pretrained(
                resolved.directory, dtype=placement.weights_dtype, output_loading_info=True,
                **_kwargs(resolved, trust_remote_code))
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        raise _fail(model_class, resolved, e) from None
    except Exception as e:
        if type(e).__name__ != "SafetensorError":
            raise
        raise ModelUnavailableError(f"model: cannot read the weights in {resolved.directory} ({e}); the file is "
                                    "damaged or truncated: copy it again") from None
    missing = sorted(info.get("missing_keys") or ())
    if missing and not allow_missing_weights:
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise ModelUnavailableError(
            f"model: {resolved.directory} has no weights for {shown}, which {model_class} needs: they would be "
            "random and every answer meaningless; use a checkpoint trained for this task, or set "
            "model.allow_missing_weights: true (speed benchmarks only)")
    model = model.to(placement.device).eval()
    use_grouped_attention(model)
    if packed:
        from batchnlp.model import kernels

        kernels.pack_linears(model, placement)
    if placement.quantize_int8:
        import torch

        from batchnlp.model.device import use_int8_engine

        use_int8_engine()
        model = torch.ao.quantization.quantize_dynamic(model, {torch.nn.Linear}, dtype=torch.qint8)
    return model


def default_max_length(directory: Path, tokenizer: Any, config: Any) -> int:
    """The longest input the model takes: a sentence-transformers model's own max_seq_length if it
    ships one, else the smaller of the tokenizer's limit and the model's position table."""
    st_config = directory / "sentence_bert_config.json"
    if st_config.is_file():
        limit = json.loads(st_config.read_text()).get("max_seq_length")
        if isinstance(limit, int):
            return limit
    config = getattr(config, "get_text_config", lambda: config)()
    limits = [n for n in (getattr(tokenizer, "model_max_length", None),
                          getattr(config, "max_position_embeddings", None),
                          getattr(config, "n_positions", None)) if isinstance(n, int) and n < 1_000_000]
    return min(limits) if limits else 512
