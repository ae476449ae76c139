"""Unambiguous file references across backends (pure functions, no I/O).

Every ComfyUI backend numbers its output files on its own, so two backends both write
``ComfyUI_00001_.png`` (shared/comfyui-api.md §7). A ``(filename, subfolder, type)`` reference
is therefore ambiguous once more than one backend runs prompts. The gateway makes every output
reference it relays name its backend, by prefixing the ``subfolder``:

    {"filename": "ComfyUI_00001_.png", "subfolder": "",    "type": "output"}   from backend "gpu1"
 -> {"filename": "ComfyUI_00001_.png", "subfolder": "_gw_gpu1", "type": "output"}

    subfolder "faces/2024"  ->  "_gw_gpu1/faces/2024"

Clients use the reference as they got it (``/view?filename=..&subfolder=_gw_gpu1&type=output``,
``/upload/mask``'s ``original_ref``, a ``LoadImage`` input naming ``_gw_gpu1/x.png [output]``);
the gateway undoes the prefix on the way in and routes to that backend. A reference that was
never rewritten (no prefix) passes unchanged and is routed by the file map or by asking the
backends in turn. Input files (uploads) are not rewritten: the gateway replicates them instead.
"""

from __future__ import annotations

import re
from typing import Any

PREFIX = "_gw_"
_TAGGED = re.compile(r"^_gw_([a-z0-9][a-z0-9_-]{0,63})(?:/(.*))?$", re.DOTALL)
REWRITTEN_TYPES = frozenset({"output", "temp"})


def tag_subfolder(backend_id: str, subfolder: str) -> str:
    """Return ``subfolder`` tagged with its backend."""
    return f"{PREFIX}{backend_id}/{subfolder}" if subfolder else f"{PREFIX}{backend_id}"


def untag_subfolder(subfolder: str) -> tuple[str | None, str]:
    """Split a possibly tagged subfolder into ``(backend_id or None, original subfolder)``."""
    match = _TAGGED.match(subfolder)
    if match is None:
        return None, subfolder
    return match.group(1), match.group(2) or ""


def tag_file_ref(backend_id: str, ref: dict[str, Any]) -> dict[str, Any]:
    """Return a copy of an output/temp file reference with its subfolder tagged."""
    if ref.get("type", "output") not in REWRITTEN_TYPES or not isinstance(ref.get("filename"), str):
        return ref
    subfolder = ref.get("subfolder") or ""
    if not isinstance(subfolder, str) or untag_subfolder(subfolder)[0] is not None:
        return ref
    return {**ref, "subfolder": tag_subfolder(backend_id, subfolder)}


def tag_outputs(backend_id: str, outputs: Any) -> Any:
    """Tag every file reference inside a node ``output`` dict (``images``, ``gifs``, ...)."""
    if not isinstance(outputs, dict):
        return outputs
    tagged: dict[str, Any] = {}
    for key, value in outputs.items():
        if isinstance(value, list):
            tagged[key] = [
                tag_file_ref(backend_id, item) if isinstance(item, dict) else item for item in value
            ]
        else:
            tagged[key] = value
    return tagged


def tag_history(backend_id: str, history: Any) -> Any:
    """Tag the outputs of every entry of a ``/history`` answer (``{prompt_id: entry}``)."""
    if not isinstance(history, dict):
        return history
    result: dict[str, Any] = {}
    for prompt_id, entry in history.items():
        if isinstance(entry, dict) and isinstance(entry.get("outputs"), dict):
            entry = {
                **entry,
                "outputs": {
                    node: tag_outputs(backend_id, out) for node, out in entry["outputs"].items()
                },
            }
        result[prompt_id] = entry
    return result


def file_refs(outputs: Any) -> list[tuple[str, str, str]]:
    """Return the ``(filename, subfolder, type)`` triples of a node output dict (untagged)."""
    refs: list[tuple[str, str, str]] = []
    if not isinstance(outputs, dict):
        return refs
    for value in outputs.values():
        if not isinstance(value, list):
            continue
        for item in value:
            if isinstance(item, dict) and isinstance(item.get("filename"), str):
                subfolder = item.get("subfolder") or ""
                refs.append(
                    (
                        item["filename"],
                        subfolder if isinstance(subfolder, str) else "",
                        str(item.get("type", "output")),
                    )
                )
    return refs


_ANNOTATION = re.compile(r"^(.*?)( \[(?:output|input|temp)\])$")


def untag_path_value(value: str) -> tuple[str | None, str]:
    """Undo a tag inside a graph input such as ``"_gw_gpu1/x.png [output]"``.

    Returns ``(backend_id or None, value without the tag)``.
    """
    if not value.startswith(PREFIX):
        return None, value
    match = _ANNOTATION.match(value)
    body, annotation = (match.group(1), match.group(2)) if match else (value, "")
    folder, _, name = body.rpartition("/")
    backend_id, original = untag_subfolder(folder if folder else body)
    if backend_id is None or not folder:
        return None, value
    path = f"{original}/{name}" if original else name
    return backend_id, path + annotation


def untag_prompt_inputs(graph: Any) -> tuple[Any, set[str]]:
    """Undo tags in a prompt graph's string inputs; return it and the backends they named."""
    if not isinstance(graph, dict):
        return graph, set()
    named: set[str] = set()
    result: dict[str, Any] = {}
    for node_id, node in graph.items():
        if isinstance(node, dict) and isinstance(node.get("inputs"), dict):
            inputs = {}
            for name, value in node["inputs"].items():
                if isinstance(value, str):
                    backend_id, value = untag_path_value(value)
                    if backend_id is not None:
                        named.add(backend_id)
                inputs[name] = value
            node = {**node, "inputs": inputs}
        result[node_id] = node
    return result, named
