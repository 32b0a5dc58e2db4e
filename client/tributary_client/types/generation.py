"""``POST /v1/generate``: the chat page's model reply."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import ConfigDict, Field, model_validator

from .common import (
    _MESSAGES,
    _STRING,
    ChatMessage,
    Integer,
    Number,
    _check_prompt_or_messages,
    _present,
    _Request,
    _Response,
)


class GenerateRequest(_Request):
    """Body of POST /v1/generate: let the indexed model answer, then attribute that."""

    model_config = ConfigDict(
        json_schema_extra={
            "oneOf": [
                {
                    "allOf": [_present("prompt", {"type": "string", "minLength": 1})],
                    "not": _present("messages", {"type": "array"}),
                },
                {"allOf": [_present("messages", _MESSAGES)], "not": _present("prompt", _STRING)},
            ]
        }
    )

    prompt: str | None = Field(
        default=None, description="Plain-text prompt; exclusive with `messages`."
    )
    messages: list[ChatMessage] | None = Field(
        default=None, description="Chat conversation to continue; exclusive with `prompt`."
    )
    max_new_tokens: Integer = Field(
        default=64,
        ge=1,
        le=4096,
        description="Generation length limit; the server caps it at its own maximum, and "
        "the prompt plus it must fit the model's context.",
    )
    temperature: Number = Field(
        default=0.0,
        ge=0.0,
        le=5.0,
        description="0 = greedy decoding; below 0.01 decodes greedily too.",
    )
    stop: list[Annotated[str, Field(min_length=1, max_length=32)]] | None = Field(
        default=None,
        max_length=4,
        description="Up to 4 strings that end the generation (not included in `response`); the "
        "model's end-of-text and end-of-turn tokens always end it.",
    )

    @model_validator(mode="after")
    def _one_input_form(self) -> GenerateRequest:
        _check_prompt_or_messages(self.prompt, None, self.messages, need_response=False)
        return self


class GenerateResponse(_Response):
    """Result of POST /v1/generate."""

    prompt: str = Field(description="The prompt as fed to the model (chat template applied).")
    response: str = Field(description="The generated text.")
    n_tokens: int = Field(description="Number of generated tokens.")
    finish_reason: Literal["stop", "length"] = Field(
        default="stop",
        description="'stop' = an end-of-text/end-of-turn token or a stop string ended it; 'length' "
        "= `max_new_tokens` (or the model's context) did.",
    )
