"""The chat format: ``<|bos|>`` then, per message, ``<|role|>`` + content + ``<|end|>``.

    <|bos|><|system|>Be brief.<|end|><|user|>2+2?<|end|><|assistant|>4<|end|>

The generation prompt is ``<|assistant|>``; a reply ends at ``<|end|>``. The same format is written as
a Jinja ``chat_template`` into the exported ``tokenizer_config.json`` so ``transformers``'
``apply_chat_template`` renders the same ids. Message content is always encoded as ordinary text
(special-token strings inside content are not turned into control tokens: no prompt injection).

This module is also the one place the special tokens are spelled: ``tokenizer/bpe.py`` (the default
set a tokenizer is trained with, ``bos_id``...) and ``tokenizer/hf.py`` (the exported roles and chat
template) derive theirs from the names below.
"""

from __future__ import annotations

from typing import Any

from scratchllm.errors import ScratchError

ROLES = ("system", "user", "assistant")
BOS, EOS, PAD, END = "<|bos|>", "<|eos|>", "<|pad|>", "<|end|>"
GENERATION_PROMPT = "<|assistant|>"
ROLE_TOKENS = tuple(f"<|{r}|>" for r in ROLES)
CHAT_SPECIAL_TOKENS = (BOS, END, *ROLE_TOKENS)
# What a tokenizer is trained with unless told otherwise.
DEFAULT_SPECIAL_TOKENS: tuple[str, ...] = (BOS, EOS, PAD, *ROLE_TOKENS, END)

# Kept on one line: Jinja would otherwise render the newlines into the prompt.
CHAT_TEMPLATE = (
    f"{{{{ '{BOS}' }}}}"
    "{% for message in messages %}"
    f"{{% if message['role'] not in {list(ROLES)} %}}"
    "{{ raise_exception('unknown role: ' + message['role']) }}"
    "{% endif %}"
    f"{{{{ '<|' + message['role'] + '|>' + message['content'] + '{END}' }}}}"
    "{% endfor %}"
    f"{{% if add_generation_prompt %}}{{{{ '{GENERATION_PROMPT}' }}}}{{% endif %}}"
)


def check_messages(messages: Any, where: str = "conversation") -> list[dict[str, str]]:
    """Validate a list of ``{"role", "content"}`` dicts; raise ScratchError naming what is wrong."""
    if not isinstance(messages, list) or not messages:
        raise ScratchError(f"{where}: messages must be a non-empty list of {{'role', 'content'}} objects",
                           'write e.g. [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]')
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
            raise ScratchError(f"{where}: message {i} is not an object with string 'role' and 'content'",
                               'each message looks like {"role": "user", "content": "..."}')
        if m["role"] not in ROLES:
            raise ScratchError(f"{where}: message {i} has unknown role {m['role']!r}",
                               f"roles are {', '.join(ROLES)}")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def _special(tokenizer: Any, token: str) -> int:
    try:
        return tokenizer.special_tokens[token]
    except KeyError:
        raise ScratchError(f"the tokenizer has no {token} special token, needed by the chat format",
                           "train the tokenizer with the default special tokens") from None


def encode_chat(
    tokenizer: Any, messages: list[dict[str, str]], add_generation_prompt: bool = False
) -> tuple[list[int], list[int]]:
    """Encode a conversation; returns ``(input_ids, loss_mask)``.

    ``loss_mask`` is 1 exactly on assistant content tokens and the assistant's closing ``<|end|>``
    (the model must learn to stop), 0 on everything else: bos, role tokens, system/user turns.
    """
    messages = check_messages(messages)
    ids = [_special(tokenizer, BOS)]
    mask = [0]
    end = _special(tokenizer, END)
    for m in messages:
        content = tokenizer.encode_ordinary(m["content"])
        learn = int(m["role"] == "assistant")
        ids += [_special(tokenizer, f"<|{m['role']}|>"), *content, end]
        mask += [0] + [learn] * (len(content) + 1)
    if add_generation_prompt:
        ids.append(_special(tokenizer, GENERATION_PROMPT))
        mask.append(0)
    return ids, mask


def render_chat(messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
    """The conversation as text (what the Jinja template renders); for display and logs."""
    messages = check_messages(messages)
    text = BOS + "".join(f"<|{m['role']}|>{m['content']}{END}" for m in messages)
    return text + (GENERATION_PROMPT if add_generation_prompt else "")
