"""Request bodies and errors of the speech API, in OpenAI's shapes; validated here, before any work. Torch-free."""

from __future__ import annotations

from typing import Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

FORMATS = {"wav": "audio/wav", "flac": "audio/flac", "mp3": "audio/mpeg", "opus": "audio/ogg; codecs=opus",
           "pcm": "audio/pcm"}   # pcm: 16-bit little-endian mono at 24 kHz, as OpenAI's
KNOBS = ("num_beams", "do_sample", "top_p", "top_k", "temperature", "repetition_penalty", "length_penalty",
         "max_mel_tokens", "diffusion_steps", "cfg_rate", "max_text_tokens_per_segment", "interval_silence_ms")


class ApiError(Exception):
    """An error a client gets as {"error": {"message", "type", "param", "code"}} with `status`."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "not_found_error",
             409: "conflict_error", 413: "invalid_request_error", 415: "invalid_request_error",
             422: "invalid_request_error", 429: "rate_limit_error", 503: "server_error", 500: "server_error"}

    def __init__(self, status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                 headers: Optional[dict] = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}


class VoiceRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str


class EmotionBody(BaseModel):
    """Our extension: an 8-value vector (happy, angry, sad, afraid, disgusted, melancholic, surprised, calm)
    and its strength alpha."""
    model_config = ConfigDict(extra="forbid")
    vector: list[float]
    alpha: float = 1.0


class SpeechRequest(BaseModel):
    """POST /v1/audio/speech: OpenAI's fields, then ours (preset, seed, every decoding knob, emotion)."""
    model_config = ConfigDict(extra="forbid")
    model: str
    input: str
    voice: Union[str, VoiceRef]
    response_format: str = "mp3"
    speed: float = 1.0
    instructions: Optional[str] = None
    stream_format: Literal["audio", "sse"] = "audio"
    preset: str = "baseline"
    seed: Optional[int] = None
    first_segment_tokens: int = Field(default=0, ge=0)   # keep the first segment short: the first audio sooner
    emotion: Optional[EmotionBody] = None
    num_beams: Optional[int] = None
    do_sample: Optional[bool] = None
    top_p: Optional[float] = None
    top_k: Optional[int] = None
    temperature: Optional[float] = None
    repetition_penalty: Optional[float] = None
    length_penalty: Optional[float] = None
    max_mel_tokens: Optional[int] = None
    diffusion_steps: Optional[int] = None
    cfg_rate: Optional[float] = None
    max_text_tokens_per_segment: Optional[int] = None
    interval_silence_ms: Optional[int] = None

    @property
    def voice_id(self) -> str:
        return self.voice if isinstance(self.voice, str) else self.voice.id

    def overrides(self) -> dict:
        return {k: getattr(self, k) for k in KNOBS if getattr(self, k) is not None}

    def check(self, max_input_chars: int, model_names: tuple[str, ...], emotion_from_text: bool = False) -> None:
        """The checks pydantic's types cannot say, each an ApiError(400) naming its field."""
        from ..errors import OptionError
        from ..options import check_seed
        from ..presets import resolve

        if self.model not in model_names:
            raise ApiError(400, f"model {self.model!r} is not served here; models: {', '.join(model_names)}", "model")
        if not self.input.strip():
            raise ApiError(400, "input is empty: give something to say", "input")
        if len(self.input) > max_input_chars:
            raise ApiError(400, f"input has {len(self.input)} characters; at most {max_input_chars}", "input",
                           "input_too_long")
        if self.response_format not in FORMATS:
            raise ApiError(400, f"response_format {self.response_format!r} is not supported; choose one of "
                                f"{', '.join(FORMATS)}", "response_format")
        if self.speed != 1.0:
            raise ApiError(400, "speed must be 1.0: IndexTTS2 has no honest speed control", "speed")
        if self.instructions and not emotion_from_text:
            raise ApiError(400, "instructions (emotion from text) need the emotion classifier of the release "
                                "(config.yaml qwen_emo_path), which this server's model folder lacks", "instructions")
        if self.instructions and self.emotion is not None:
            raise ApiError(400, "give instructions or emotion, not both", "instructions")
        try:
            if self.seed is not None:
                check_seed(self.seed)
            resolve(self.preset, self.overrides())
        except OptionError as e:
            raise ApiError(400, str(e), _param_of(str(e))) from None
        if self.emotion is not None:
            e = self.emotion
            if len(e.vector) != 8 or any(not 0 <= v < float("inf") for v in e.vector):
                raise ApiError(400, "emotion.vector needs 8 finite weights >= 0", "emotion.vector")
            if not 0.0 <= e.alpha <= 1.0:
                raise ApiError(400, f"emotion.alpha {e.alpha} is outside 0..1", "emotion.alpha")


def _param_of(message: str) -> Optional[str]:
    for name in ("seed", "preset", *KNOBS):
        if name in message:
            return name
    return None
