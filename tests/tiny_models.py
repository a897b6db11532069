"""Builders of tiny random models (2 layers, 32 dimensions) with real tokenizers, saved to a
directory the way a user's model would be. Random weights exercise every code path; only answer
quality cannot be checked offline."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import torch

WORDS = """the a an and or but of to in on at for with is was it this that not very good great bad
terrible awful excellent love hate movie film product battery screen sound quality price works broke
fine ok okay recommend would again never always best worst fast slow cheap expensive story acting
plot ending characters music coffee machine shoes fit size comfortable return refund capital paris
france city where what who example sports politics business science world""".split()

CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a good movie with great acting and a slow plot",
    "the battery of this phone lasts all day", "where is the capital of france? it is paris",
    "translate english to german: the house is wonderful", "das haus ist wunderbar",
    "summarize: the committee met on monday and agreed on a new budget for the city",
] * 20


def wordpiece_tokenizer(directory: Path, model_max_length: int = 128):
    """A real BERT WordPiece tokenizer over a small vocabulary (every word still tokenizes, in pieces)."""
    from transformers import BertTokenizerFast

    pieces = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *pieces, *[f"##{p}" for p in pieces]]
    directory.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(dict.fromkeys(vocab))},
                                  do_lower_case=True, model_max_length=model_max_length)
    assert len(tokenizer) > 200 and tokenizer.tokenize("the capital")[:2] == ["the", "capital"]
    tokenizer.save_pretrained(directory)
    return tokenizer


def bpe_tokenizer(directory: Path, specials=("<s>", "</s>", "<pad>", "<unk>")):
    """A byte-level BPE tokenizer (GPT-2/BART style) trained on the fly."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import PreTrainedTokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(CORPUS, vocab_size=400, min_frequency=1, special_tokens=list(specials))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="<unk>", model_max_length=128)
    tokenizer.save_pretrained(directory)
    return tokenizer


def save(model, directory: Path) -> Path:
    model.eval().save_pretrained(directory)
    return directory


def tiny_distilbert(tokenizer: Any, **settings: Any) -> Any:
    """The tiny DistilBERT shape the DistilBERT test models share (settings override or add)."""
    from transformers import DistilBertConfig

    return DistilBertConfig(**{"vocab_size": len(tokenizer), "dim": 32, "n_layers": 2, "n_heads": 2,
                               "hidden_dim": 64, "max_position_embeddings": 128, "initializer_range": 0.3,
                               **settings})


def tiny_bert(tokenizer: Any, **settings: Any) -> Any:
    """The tiny BERT shape the BERT test models share (settings override or add)."""
    from transformers import BertConfig

    return BertConfig(**{"vocab_size": len(tokenizer), "hidden_size": 32, "num_hidden_layers": 2,
                         "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 128,
                         "initializer_range": 0.3, **settings})


def labelled(labels: list[str]) -> dict[str, Any]:
    return {"id2label": dict(enumerate(labels)), "label2id": {name: i for i, name in enumerate(labels)}}


def classifier(directory: Path, labels: list[str], seed: int) -> Path:
    """A DistilBERT sequence classifier with these labels."""
    from transformers import DistilBertForSequenceClassification

    tokenizer = wordpiece_tokenizer(directory)
    torch.manual_seed(seed)
    return save(DistilBertForSequenceClassification(tiny_distilbert(tokenizer, **labelled(labels))), directory)


def sentiment_classifier(directory: Path) -> Path:
    return classifier(directory, ["negative", "neutral", "positive"], seed=0)


def encoder(directory: Path) -> Path:
    """A BERT encoder, for embeddings."""
    from transformers import BertModel

    tokenizer = wordpiece_tokenizer(directory)
    torch.manual_seed(0)
    return save(BertModel(tiny_bert(tokenizer)), directory)


def nli_classifier(directory: Path) -> Path:
    return classifier(directory, ["contradiction", "neutral", "entailment"], seed=1)


def masked_lm(directory: Path) -> Path:
    from transformers import DistilBertForMaskedLM

    tokenizer = wordpiece_tokenizer(directory)
    torch.manual_seed(2)
    return save(DistilBertForMaskedLM(tiny_distilbert(tokenizer)), directory)


NER_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG", "MISC"]


def token_classifier(directory: Path, max_positions: int = 512) -> Path:
    from transformers import BertForTokenClassification

    tokenizer = wordpiece_tokenizer(directory, model_max_length=max_positions)
    torch.manual_seed(3)
    config = tiny_bert(tokenizer, max_position_embeddings=max_positions, **labelled(NER_LABELS))
    return save(BertForTokenClassification(config), directory)


def span_picking_qa(directory: Path, start_word: str = "paris", end_word: str = "france") -> Path:
    """A BERT QA model whose logits pick the span from `start_word` to `end_word`, by construction:
    every encoder layer is switched off (zero output projections: each layer is then a LayerNorm of
    its input, which keeps the embedding's direction), and the two tokens' embeddings carry a
    large value in the dimension that the start (resp. end) logit reads; [CLS] (no answer) a middling one."""
    from transformers import BertForQuestionAnswering

    tokenizer = wordpiece_tokenizer(directory, model_max_length=64)
    torch.manual_seed(4)
    config = tiny_bert(tokenizer, max_position_embeddings=64, initializer_range=0.02)  # BertConfig's default
    model = BertForQuestionAnswering(config)
    with torch.no_grad():
        for layer in model.bert.encoder.layer:
            for linear in (layer.attention.output.dense, layer.output.dense):
                linear.weight.zero_()
                linear.bias.zero_()
        embeddings = model.bert.embeddings
        embeddings.position_embeddings.weight.zero_()
        embeddings.token_type_embeddings.weight.zero_()
        words = embeddings.word_embeddings.weight
        words.normal_(0, 1)
        words[:, 0] = -3.0
        words[:, 1] = -3.0
        words[tokenizer.convert_tokens_to_ids(start_word), 0] = 3.0
        words[tokenizer.convert_tokens_to_ids(end_word), 1] = 3.0
        words[tokenizer.cls_token_id, :2] = 1.0  # the "no answer" span: below the answer, above the rest
        model.qa_outputs.weight.zero_()
        model.qa_outputs.bias.zero_()
        model.qa_outputs.weight[0, 0] = 10.0  # start logit reads dimension 0
        model.qa_outputs.weight[1, 1] = 10.0  # end logit reads dimension 1
    return save(model, directory)


CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}</s>{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant:{% endif %}")


def causal_lm(directory: Path) -> Path:
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = bpe_tokenizer(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    torch.manual_seed(5)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2, n_positions=128,
                        initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save(GPT2LMHeadModel(config), directory)


def grouped_causal_lm(directory: Path) -> Path:
    """A Llama with grouped-query attention (4 query heads on 2 key/value heads) and RoPE, like
    SmolLM2 and the Llama family."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = bpe_tokenizer(directory)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(directory)
    torch.manual_seed(6)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.5, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return save(LlamaForCausalLM(config), directory)


def bart(directory: Path) -> Path:
    from transformers import BartConfig, BartForConditionalGeneration

    tokenizer = bpe_tokenizer(directory)
    torch.manual_seed(6)
    config = BartConfig(vocab_size=len(tokenizer), d_model=32, encoder_layers=2, decoder_layers=2,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                        decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.5,
                        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                        pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.eos_token_id,
                        forced_eos_token_id=tokenizer.eos_token_id)
    model = BartForConditionalGeneration(config)
    model.generation_config.max_length = 20
    return save(model, directory)


def marian(directory: Path) -> Path:
    """A Marian-shaped (opus-mt) model with a real Marian tokenizer: two SentencePiece models
    trained on the fly and a shared vocabulary."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    text = directory / "corpus.txt"
    text.write_text("\n".join(CORPUS) + "\n")
    for side in ("source", "target"):
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(directory / side), vocab_size=60,
                                       character_coverage=1.0, model_type="unigram", bos_id=-1, eos_id=-1,
                                       pad_id=-1, unk_id=0, minloglevel=2)
        (directory / f"{side}.vocab").unlink()
    pieces = ["</s>", "<unk>", "<pad>"]
    for side in ("source", "target"):
        processor = spm.SentencePieceProcessor(model_file=str(directory / f"{side}.model"))
        pieces += [processor.id_to_piece(i) for i in range(processor.get_piece_size())]
    vocab = {piece: i for i, piece in enumerate(dict.fromkeys(pieces))}
    (directory / "vocab.json").write_text(json.dumps(vocab))
    for side in ("source", "target"):
        (directory / f"{side}.model").rename(directory / f"{side}.spm")
    text.unlink()
    tokenizer = MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"),
                                str(directory / "vocab.json"))
    tokenizer.save_pretrained(directory)
    torch.manual_seed(7)
    config = MarianConfig(vocab_size=len(vocab), d_model=32, encoder_layers=2, decoder_layers=2,
                          encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                          decoder_ffn_dim=64, max_position_embeddings=128, init_std=0.5,
                          pad_token_id=vocab["<pad>"], eos_token_id=vocab["</s>"],
                          decoder_start_token_id=vocab["<pad>"], forced_eos_token_id=vocab["</s>"])
    model = MarianMTModel(config)
    model.generation_config.max_length = 20
    return save(model, directory)


def random_qa(directory: Path, positions: int = 128) -> Path:
    """A random BERT QA model with spread-out logits (no near ties), committed under tests/data/qa_model
    (and, with 512 positions, tests/data/qa_model_512) so that transformers 4.x's pipeline could be
    recorded on the very same weights."""
    from transformers import BertForQuestionAnswering

    tokenizer = wordpiece_tokenizer(directory, model_max_length=positions)
    torch.manual_seed(7)
    return save(BertForQuestionAnswering(tiny_bert(tokenizer, initializer_range=0.5,
                                                   max_position_embeddings=positions)), directory)
