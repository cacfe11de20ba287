"""A tiny word-level tokenizer with a chat template, built with the `tokenizers` library and
saved as transformers does (tokenizer.json + tokenizer_config.json)."""
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

WORDS = ["<pad>", "<s>", "</s>", "<unk>", "user", "assistant", ":", "\n", "hi", "hello", "go", "away", "2+2?",
         "4", "5", "name", "a", "color", "blue", "seven", "good", "bad", "yes", "no"]
TEMPLATE = ("{% for m in messages %}{{ m['role'] }} : {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}assistant :{% endif %}")


def word_tokenizer(words, template=None) -> PreTrainedTokenizerFast:
    """One token per whitespace-separated word of ``words`` (which must hold <pad>, <s>, </s>,
    <unk>), with ``template`` as the chat template when given."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")
    if template is not None:
        fast.chat_template = template
    return fast


def make_tokenizer(path=None, chat_template=True):
    fast = word_tokenizer(WORDS, TEMPLATE if chat_template else None)
    if path is not None:
        fast.save_pretrained(path)
    return fast
