"""Exports of emotion vectors to other runtimes. ``gguf``: llama.cpp control-vector files (docs/llamacpp.md)."""

from emolab.export.gguf import (
    ControlVectorFile,
    ExportError,
    control_vector,
    emolab_layer,
    export_gguf,
    export_per_emotion,
    llamacpp_direction_index,
    model_hint_for,
    parse_steering,
    read_control_vector,
    write_control_vector,
)

__all__ = [
    "ControlVectorFile",
    "ExportError",
    "control_vector",
    "emolab_layer",
    "export_gguf",
    "export_per_emotion",
    "llamacpp_direction_index",
    "model_hint_for",
    "parse_steering",
    "read_control_vector",
    "write_control_vector",
]
