"""Node catalogue of the simulated backend: ``/object_info`` shapes and prompt validation.

The node schemas mirror ComfyUI 0.3.64 (``nodes.py``, ``custom_nodes/websocket_image_save.py``,
``comfy_extras/nodes_primitive.py``). :func:`validate_prompt` is a port of
``execution.validate_prompt``/``validate_inputs`` (same error types, messages and details).
Two simulator-only nodes exist: ``FailNode`` (raises when executed) and ``FakeDelay`` (spends a
given number of seconds in progress steps).

:data:`NODES` are the nodes this backend executes. :data:`MODEL_NODES` are schema-only: the nodes
of the web frontend's default graph (load checkpoint, CLIP text encode, empty latent, KSampler, VAE
decode), listed by ``/object_info`` so the frontend opens its default graph without a "missing
nodes" dialog, as it does on a real ComfyUI. This backend has no models, so their model lists are
empty and a prompt that uses them fails validation (``value_not_in_list`` on ``ckpt_name``) exactly
like a real ComfyUI without models: they never reach the worker. :data:`ALL_NODES` is both.
"""

from __future__ import annotations

import mimetypes
import os
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

MAX_RESOLUTION = 16384

InputTypes = dict[str, dict[str, Any]]


@dataclass(frozen=True)
class NodeEnv:
    """What node schemas and validation may depend on (this backend's directories)."""

    input_dir: str
    output_dir: str = ""
    temp_dir: str = ""
    output_prefix: str = "ComfyUI"


@dataclass(frozen=True)
class NodeDef:
    """Schema of one node class (the parts ``/object_info`` and validation use)."""

    name: str
    display_name: str
    category: str
    input_types: Callable[[NodeEnv], InputTypes]
    output: tuple[str, ...] = ()
    output_name: tuple[str, ...] | None = None
    output_node: bool = False
    description: str = ""
    python_module: str = "nodes"
    #: argument names of VALIDATE_INPUTS (inputs listed here skip the generic value checks)
    validate_args: tuple[str, ...] = ()
    validate: Callable[[NodeEnv, dict[str, Any]], Any] | None = None
    #: V3 nodes (comfy_api io.ComfyNode) have a slightly different object_info layout
    v3: bool = False
    experimental: bool = False
    #: OUTPUT_TOOLTIPS (``output_tooltips`` in ``/object_info`` when set)
    output_tooltips: tuple[str, ...] | None = None


# --------------------------------------------------------------------------- schemas


def _image_files(input_dir: str) -> list[str]:
    """Files of ``input_dir`` whose mimetype is ``image/*`` (LoadImage's combo list)."""
    try:
        names = [f for f in os.listdir(input_dir) if os.path.isfile(os.path.join(input_dir, f))]
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        mime, _ = mimetypes.guess_type(name, strict=False)
        if mime and mime.split("/")[0] == "image":
            out.append(name)
    return sorted(out)


def _exists_annotated(env: NodeEnv, name: str) -> bool:
    """folder_paths.exists_annotated_filepath against this backend's directories."""
    base = env.input_dir
    if name.endswith("[output]"):
        name, base = name[:-9], env.output_dir
    elif name.endswith("[input]"):
        name = name[:-8]
    elif name.endswith("[temp]"):
        name, base = name[:-7], env.temp_dir
    return os.path.exists(os.path.join(base, name))


def _validate_load_image(env: NodeEnv, args: dict[str, Any]) -> bool | str:
    image = args["image"]
    if not _exists_annotated(env, image):
        return f"Invalid image file: {image}"
    return True


_SAVE_DESCRIPTION = "Saves the input images to your ComfyUI output directory."
_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


def _int(default: int, lo: int, hi: int, **extra: Any) -> tuple[str, dict[str, Any]]:
    return ("INT", {"default": default, "min": lo, "max": hi, **extra})


NODES: dict[str, NodeDef] = {
    node.name: node
    for node in (
        NodeDef(
            name="EmptyImage",
            display_name="EmptyImage",
            category="image",
            input_types=lambda env: {
                "required": {
                    "width": _int(512, 1, MAX_RESOLUTION, step=1),
                    "height": _int(512, 1, MAX_RESOLUTION, step=1),
                    "batch_size": _int(1, 1, 4096),
                    "color": _int(0, 0, 0xFFFFFF, step=1, display="color"),
                }
            },
            output=("IMAGE",),
        ),
        NodeDef(
            name="ImageInvert",
            display_name="Invert Image",
            category="image",
            input_types=lambda env: {"required": {"image": ("IMAGE",)}},
            output=("IMAGE",),
        ),
        NodeDef(
            name="ImageScale",
            display_name="Upscale Image",
            category="image/upscaling",
            input_types=lambda env: {
                "required": {
                    "image": ("IMAGE",),
                    "upscale_method": (
                        ["nearest-exact", "bilinear", "area", "bicubic", "lanczos"],
                    ),
                    "width": _int(512, 0, MAX_RESOLUTION, step=1),
                    "height": _int(512, 0, MAX_RESOLUTION, step=1),
                    "crop": (["disabled", "center"],),
                }
            },
            output=("IMAGE",),
        ),
        NodeDef(
            name="SaveImage",
            display_name="Save Image",
            category="image",
            input_types=lambda env: {
                "required": {
                    "images": ("IMAGE", {"tooltip": "The images to save."}),
                    "filename_prefix": (
                        "STRING",
                        {
                            "default": env.output_prefix,
                            "tooltip": "The prefix for the file to save. This may include "
                            "formatting information such as %date:yyyy-MM-dd% or "
                            "%Empty Latent Image.width% to include values from nodes.",
                        },
                    ),
                },
                "hidden": dict(_HIDDEN),
            },
            output_node=True,
            description=_SAVE_DESCRIPTION,
        ),
        NodeDef(
            name="PreviewImage",
            display_name="Preview Image",
            category="image",
            input_types=lambda env: {
                "required": {"images": ("IMAGE",)},
                "hidden": dict(_HIDDEN),
            },
            output_node=True,
            description=_SAVE_DESCRIPTION,
        ),
        NodeDef(
            name="LoadImage",
            display_name="Load Image",
            category="image",
            input_types=lambda env: {
                "required": {"image": (_image_files(env.input_dir), {"image_upload": True})}
            },
            output=("IMAGE", "MASK"),
            validate_args=("image",),
            validate=_validate_load_image,
        ),
        NodeDef(
            name="SaveImageWebsocket",
            display_name="SaveImageWebsocket",
            category="api/image",
            input_types=lambda env: {"required": {"images": ("IMAGE",)}},
            output_node=True,
            python_module="custom_nodes.websocket_image_save",
        ),
        NodeDef(
            name="PrimitiveInt",
            display_name="Int",
            category="utils/primitive",
            input_types=lambda env: {
                "required": {
                    "value": (
                        "INT",
                        {"min": -sys.maxsize, "max": sys.maxsize, "control_after_generate": True},
                    )
                }
            },
            output=("INT",),
            python_module="comfy_extras.nodes_primitive",
            v3=True,
        ),
        NodeDef(
            name="FailNode",
            display_name="Fail (simulator)",
            category="testing",
            input_types=lambda env: {
                "required": {},
                "optional": {
                    "image": ("IMAGE",),
                    "message": ("STRING", {"default": "simulated failure"}),
                },
            },
            output=("IMAGE",),
            output_node=True,
            description="Simulator only: raises RuntimeError(message) when executed.",
            python_module="gateway.testing",
            experimental=True,
        ),
        NodeDef(
            name="FakeDelay",
            display_name="Delay (simulator)",
            category="testing",
            input_types=lambda env: {
                "required": {"seconds": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 3600.0})},
                "optional": {"image": ("IMAGE",)},
            },
            output=("IMAGE",),
            description="Simulator only: reports progress steps over `seconds`, "
            "then passes the image through.",
            python_module="gateway.testing",
            experimental=True,
        ),
    )
}


#: comfy.samplers.KSampler.SAMPLERS at ComfyUI 0.3.64
SAMPLER_NAMES = [
    *("euler", "euler_cfg_pp", "euler_ancestral", "euler_ancestral_cfg_pp", "heun", "heunpp2"),
    *("dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive", "dpmpp_2s_ancestral"),
    *("dpmpp_2s_ancestral_cfg_pp", "dpmpp_sde", "dpmpp_sde_gpu", "dpmpp_2m", "dpmpp_2m_cfg_pp"),
    *("dpmpp_2m_sde", "dpmpp_2m_sde_gpu", "dpmpp_2m_sde_heun", "dpmpp_2m_sde_heun_gpu"),
    *("dpmpp_3m_sde", "dpmpp_3m_sde_gpu", "ddpm", "lcm", "ipndm", "ipndm_v", "deis"),
    *("res_multistep", "res_multistep_cfg_pp", "res_multistep_ancestral"),
    *("res_multistep_ancestral_cfg_pp", "gradient_estimation", "gradient_estimation_cfg_pp"),
    *("er_sde", "seeds_2", "seeds_3", "sa_solver", "sa_solver_pece", "ddim", "uni_pc"),
    "uni_pc_bh2",
]
#: comfy.samplers.KSampler.SCHEDULERS at ComfyUI 0.3.64
SCHEDULER_NAMES = [
    *("simple", "sgm_uniform", "karras", "exponential", "ddim_uniform", "beta", "normal"),
    *("linear_quadratic", "kl_optimal"),
]

_CFG_TOOLTIP = (
    "The Classifier-Free Guidance scale balances creativity and adherence to the prompt. Higher "
    "values result in images more closely matching the prompt however too high values will "
    "negatively impact quality."
)
_DENOISE_TOOLTIP = (
    "The amount of denoising applied, lower values will maintain the structure of the initial "
    "image allowing for image to image sampling."
)


def _tip(kind: Any, tooltip: str, **extra: Any) -> tuple[Any, dict[str, Any]]:
    return (kind, {**extra, "tooltip": tooltip})


#: Schema-only nodes of the frontend's default graph (``nodes.py`` at 0.3.64); see the module doc.
MODEL_NODES: dict[str, NodeDef] = {
    node.name: node
    for node in (
        NodeDef(
            name="KSampler",
            display_name="KSampler",
            category="sampling",
            input_types=lambda env: {
                "required": {
                    "model": _tip("MODEL", "The model used for denoising the input latent."),
                    "seed": _tip(
                        "INT",
                        "The random seed used for creating the noise.",
                        default=0,
                        min=0,
                        max=0xFFFFFFFFFFFFFFFF,
                        control_after_generate=True,
                    ),
                    "steps": _tip(
                        "INT",
                        "The number of steps used in the denoising process.",
                        default=20,
                        min=1,
                        max=10000,
                    ),
                    "cfg": _tip(
                        "FLOAT", _CFG_TOOLTIP, default=8.0, min=0.0, max=100.0, step=0.1, round=0.01
                    ),
                    "sampler_name": _tip(
                        list(SAMPLER_NAMES),
                        "The algorithm used when sampling, this can affect the quality, speed, "
                        "and style of the generated output.",
                    ),
                    "scheduler": _tip(
                        list(SCHEDULER_NAMES),
                        "The scheduler controls how noise is gradually removed to form the image.",
                    ),
                    "positive": _tip(
                        "CONDITIONING",
                        "The conditioning describing the attributes you want to include in the "
                        "image.",
                    ),
                    "negative": _tip(
                        "CONDITIONING",
                        "The conditioning describing the attributes you want to exclude from the "
                        "image.",
                    ),
                    "latent_image": _tip("LATENT", "The latent image to denoise."),
                    "denoise": _tip(
                        "FLOAT", _DENOISE_TOOLTIP, default=1.0, min=0.0, max=1.0, step=0.01
                    ),
                }
            },
            output=("LATENT",),
            output_tooltips=("The denoised latent.",),
            description="Uses the provided model, positive and negative conditioning to denoise "
            "the latent image.",
        ),
        NodeDef(
            name="CheckpointLoaderSimple",
            display_name="Load Checkpoint",
            category="loaders",
            # folder_paths.get_filename_list("checkpoints"): this backend has no models.
            input_types=lambda env: {
                "required": {
                    "ckpt_name": _tip([], "The name of the checkpoint (model) to load."),
                }
            },
            output=("MODEL", "CLIP", "VAE"),
            output_tooltips=(
                "The model used for denoising latents.",
                "The CLIP model used for encoding text prompts.",
                "The VAE model used for encoding and decoding images to and from latent space.",
            ),
            description="Loads a diffusion model checkpoint, diffusion models are used to denoise "
            "latents.",
        ),
        NodeDef(
            name="CLIPTextEncode",
            display_name="CLIP Text Encode (Prompt)",
            category="conditioning",
            input_types=lambda env: {
                "required": {
                    "text": _tip(
                        "STRING", "The text to be encoded.", multiline=True, dynamicPrompts=True
                    ),
                    "clip": _tip("CLIP", "The CLIP model used for encoding the text."),
                }
            },
            output=("CONDITIONING",),
            output_tooltips=(
                "A conditioning containing the embedded text used to guide the diffusion model.",
            ),
            description="Encodes a text prompt using a CLIP model into an embedding that can be "
            "used to guide the diffusion model towards generating specific images.",
        ),
        NodeDef(
            name="VAEDecode",
            display_name="VAE Decode",
            category="latent",
            input_types=lambda env: {
                "required": {
                    "samples": _tip("LATENT", "The latent to be decoded."),
                    "vae": _tip("VAE", "The VAE model used for decoding the latent."),
                }
            },
            output=("IMAGE",),
            output_tooltips=("The decoded image.",),
            description="Decodes latent images back into pixel space images.",
        ),
        NodeDef(
            name="EmptyLatentImage",
            display_name="Empty Latent Image",
            category="latent",
            input_types=lambda env: {
                "required": {
                    "width": _tip(
                        "INT",
                        "The width of the latent images in pixels.",
                        default=512,
                        min=16,
                        max=MAX_RESOLUTION,
                        step=8,
                    ),
                    "height": _tip(
                        "INT",
                        "The height of the latent images in pixels.",
                        default=512,
                        min=16,
                        max=MAX_RESOLUTION,
                        step=8,
                    ),
                    "batch_size": _tip(
                        "INT",
                        "The number of latent images in the batch.",
                        default=1,
                        min=1,
                        max=4096,
                    ),
                }
            },
            output=("LATENT",),
            output_tooltips=("The empty latent image batch.",),
            description="Create a new batch of empty latent images to be denoised via sampling.",
        ),
    )
}

#: Every node ``/object_info`` lists and validation knows (the worker executes only NODES).
ALL_NODES: dict[str, NodeDef] = {**MODEL_NODES, **NODES}


# --------------------------------------------------------------------------- object_info


def node_info(node: NodeDef, env: NodeEnv) -> dict[str, Any]:
    """``/object_info`` entry of one node, key order as server.py ``node_info`` produces it."""
    inputs = node.input_types(env)
    input_order = {key: list(value.keys()) for key, value in inputs.items()}
    names = list(node.output_name or node.output)
    if node.v3:
        return {
            "input": inputs,
            "input_order": input_order,
            "output": list(node.output),
            "output_is_list": [False] * len(node.output),
            "output_name": names,
            "output_tooltips": [None] * len(node.output),
            "name": node.name,
            "display_name": node.display_name,
            "description": node.description,
            "python_module": node.python_module,
            "category": node.category,
            "output_node": node.output_node,
            "deprecated": False,
            "experimental": node.experimental,
            "api_node": False,
        }
    info: dict[str, Any] = {
        "input": inputs,
        "input_order": input_order,
        "output": list(node.output),
        "output_is_list": [False] * len(node.output),
        "output_name": names,
        "name": node.name,
        "display_name": node.display_name,
        "description": node.description,
        "python_module": node.python_module,
        "category": node.category,
        "output_node": node.output_node,
    }
    if node.output_tooltips is not None:
        info["output_tooltips"] = list(node.output_tooltips)
    if node.experimental:
        info["experimental"] = True
    return info


def object_info(env: NodeEnv) -> dict[str, Any]:
    """The full ``GET /object_info`` body (executable and schema-only nodes)."""
    return {name: node_info(node, env) for name, node in ALL_NODES.items()}


# --------------------------------------------------------------------------- validation


def is_link(value: Any) -> bool:
    """comfy_execution.graph_utils.is_link: ``[node_id: str, slot: int|float]``."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int | float)
    )


def _input_info(
    input_types: InputTypes, name: str
) -> tuple[Any, str | None, dict[str, Any] | None]:
    """execution.get_input_info: ``(input_type, category, extra_info)``."""
    for category in ("required", "optional", "hidden"):
        if name in input_types.get(category, {}):
            spec = input_types[category][name]
            if category == "hidden":
                return spec, category, {}
            extra = spec[1] if len(spec) > 1 else {}
            return spec[0], category, extra
    return None, None, None


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """comfy_execution.validation.validate_node_input (non-strict)."""
    if received_type == input_type:
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    wanted = {t.strip() for t in input_type.split(",")}
    return "*" in received or "*" in wanted or bool(received & wanted)


def full_type_name(klass: type) -> str:
    """execution.full_type_name."""
    if klass.__module__ == "builtins":
        return klass.__qualname__
    return f"{klass.__module__}.{klass.__qualname__}"


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "INT": int,
    "FLOAT": float,
    "STRING": str,
    "BOOLEAN": bool,
}

Validated = dict[str, tuple[bool, list[dict[str, Any]], str]]


def _error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def _check_link(
    env: NodeEnv,
    prompt: dict[str, Any],
    name: str,
    val: list[Any],
    info: tuple[Any, dict[str, Any]],
    validated: Validated,
    skip_type_check: bool,
) -> tuple[dict[str, Any] | None, bool]:
    """Validate a linked input. Returns ``(error_or_None, upstream_valid)``."""
    input_type = info[0]
    if len(val) != 2:
        msg = "Bad linked input, must be a length-2 list of [node_id, slot_index]"
        return _error(
            "bad_linked_input", msg, name, input_name=name, input_config=info, received_value=val
        ), True
    o_id = val[0]
    received_type = ALL_NODES[prompt[o_id]["class_type"]].output[val[1]]
    if not skip_type_check and not validate_node_input(received_type, input_type):
        details = f"{name}, received_type({received_type}) mismatch input_type({input_type})"
        return _error(
            "return_type_mismatch",
            "Return type mismatch between linked nodes",
            details,
            input_name=name,
            input_config=info,
            received_type=received_type,
            linked_node=val,
        ), True
    try:
        upstream_ok = _validate_inputs(env, prompt, o_id, validated)[0]
    except Exception as ex:
        typ, _, tb = sys.exc_info()
        validated[o_id] = (
            False,
            [
                _error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    input_name=name,
                    input_config=info,
                    exception_message=str(ex),
                    exception_type=full_type_name(typ or type(ex)),
                    traceback=traceback.format_tb(tb),
                    linked_node=val,
                )
            ],
            o_id,
        )
        return None, False
    return None, upstream_ok


def _check_value(
    inputs: dict[str, Any], name: str, info: tuple[Any, dict[str, Any]], generic_checks: bool
) -> dict[str, Any] | None:
    """Convert/check a widget value in place (INT/FLOAT/STRING/BOOLEAN, min, max, combo)."""
    input_type, extra_info = info
    val = inputs[name]
    try:
        if isinstance(val, dict) and "__value__" in val:
            val = val["__value__"]
            inputs[name] = val
        if isinstance(input_type, str) and input_type in _CONVERTERS:
            val = _CONVERTERS[input_type](val)
            inputs[name] = val
    except Exception as ex:
        return _error(
            "invalid_input_type",
            f"Failed to convert an input value to a {input_type} value",
            f"{name}, {val}, {ex}",
            input_name=name,
            input_config=info,
            received_value=val,
            exception_message=str(ex),
        )
    if not generic_checks:
        return None
    if "min" in extra_info and val < extra_info["min"]:
        return _error(
            "value_smaller_than_min",
            "Value {} smaller than min of {}".format(val, extra_info["min"]),
            name,
            input_name=name,
            input_config=info,
            received_value=val,
        )
    if "max" in extra_info and val > extra_info["max"]:
        return _error(
            "value_bigger_than_max",
            "Value {} bigger than max of {}".format(val, extra_info["max"]),
            name,
            input_name=name,
            input_config=info,
            received_value=val,
        )
    if isinstance(input_type, list) and val not in input_type:
        big = len(input_type) > 20
        list_info = f"(list of length {len(input_type)})" if big else str(input_type)
        return _error(
            "value_not_in_list",
            "Value not in list",
            f"{name}: '{val}' not in {list_info}",
            input_name=name,
            input_config=None if big else info,
            received_value=val,
        )
    return None


def _custom_validation(env: NodeEnv, node: NodeDef, inputs: dict[str, Any]) -> list[dict[str, Any]]:
    """Call the node's VALIDATE_INPUTS with its widget values (links count as None)."""
    assert node.validate is not None
    args: dict[str, Any] = {}
    for name in node.validate_args:
        if name in inputs:
            args[name] = None if is_link(inputs[name]) else inputs[name]
    missing = [n for n in node.validate_args if n not in args]
    if missing:
        raise TypeError(
            f"VALIDATE_INPUTS() missing {len(missing)} required positional argument: '{missing[0]}'"
        )
    result = node.validate(env, args)
    errors = []
    for name in args:
        if result is not True:
            details = name if result is False else f"{name} - {result}"
            errors.append(
                _error(
                    "custom_validation_failed",
                    "Custom validation failed for node",
                    details,
                    input_name=name,
                )
            )
    return errors


def _validate_inputs(
    env: NodeEnv, prompt: dict[str, Any], unique_id: str, validated: Validated
) -> tuple[bool, list[dict[str, Any]], str]:
    """Port of execution.validate_inputs (converts widget values in place, like ComfyUI)."""
    if unique_id in validated:
        return validated[unique_id]
    inputs = prompt[unique_id]["inputs"]
    node = ALL_NODES[prompt[unique_id]["class_type"]]
    input_types = node.input_types(env)
    names = [*input_types.get("required", {}), *input_types.get("optional", {})]
    errors: list[dict[str, Any]] = []
    valid = True
    for name in names:
        input_type, category, extra_info = _input_info(input_types, name)
        info = (input_type, extra_info or {})
        if name not in inputs:
            if category == "required":
                errors.append(
                    _error(
                        "required_input_missing",
                        "Required input is missing",
                        name,
                        input_name=name,
                    )
                )
            continue
        val = inputs[name]
        if isinstance(val, list):
            error, upstream_ok = _check_link(
                env, prompt, name, val, info, validated, skip_type_check=False
            )
            if error is not None:
                errors.append(error)
            elif not upstream_ok:
                valid = False
            continue
        error = _check_value(inputs, name, info, generic_checks=name not in node.validate_args)
        if error is not None:
            errors.append(error)
    if node.validate is not None:
        errors.extend(_custom_validation(env, node, inputs))
    result = (not errors and valid, errors, unique_id)
    validated[unique_id] = result
    return result


@dataclass
class ValidationResult:
    """``(valid, error, good_outputs, node_errors)`` of execution.validate_prompt."""

    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


def _structural_error(prompt: dict[str, Any]) -> dict[str, Any] | None:
    for node_id, node in prompt.items():
        if not isinstance(node, dict) or "class_type" not in node:
            return _error(
                "invalid_prompt",
                "Cannot execute because a node is missing the class_type property.",
                f"Node ID '#{node_id}'",
            )
        if node["class_type"] not in ALL_NODES:
            return _error(
                "invalid_prompt",
                f"Cannot execute because node {node['class_type']} does not exist.",
                f"Node ID '#{node_id}'",
            )
    return None


def validate_prompt(
    env: NodeEnv, prompt: dict[str, Any], partial_execution_targets: list[str] | None = None
) -> ValidationResult:
    """Port of execution.validate_prompt (same error types, messages, node_errors shape)."""
    structural = _structural_error(prompt)
    if structural is not None:
        return ValidationResult(False, structural, [], {})
    outputs = [
        node_id
        for node_id, node in prompt.items()
        if ALL_NODES[node["class_type"]].output_node
        and (partial_execution_targets is None or node_id in partial_execution_targets)
    ]
    if not outputs:
        return ValidationResult(
            False, _error("prompt_no_outputs", "Prompt has no outputs", ""), [], {}
        )
    good: list[str] = []
    failures: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: Validated = {}
    for output in outputs:
        try:
            valid, reasons, _ = _validate_inputs(env, prompt, output, validated)
        except Exception as ex:
            typ, _, tb = sys.exc_info()
            valid = False
            reasons = [
                _error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    exception_type=full_type_name(typ or type(ex)),
                    traceback=traceback.format_tb(tb),
                )
            ]
            validated[output] = (False, reasons, output)
        if valid:
            good.append(output)
            continue
        failures.append((output, reasons))
        for node_id, (ok, node_reasons, _) in validated.items():
            if ok or not node_reasons:
                continue
            entry = node_errors.setdefault(
                node_id,
                {
                    "errors": node_reasons,
                    "dependent_outputs": [],
                    "class_type": prompt[node_id]["class_type"],
                },
            )
            entry["dependent_outputs"].append(output)
    if not good:
        details = "\n".join(
            f"{error['message']}: {error['details']}" for _, errors in failures for error in errors
        )
        error = _error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good, node_errors)


# --------------------------------------------------------------------------- execution order


def _links(node: dict[str, Any]) -> list[str]:
    return [v[0] for v in node.get("inputs", {}).values() if is_link(v)]


def execution_order(prompt: dict[str, Any], outputs: list[str]) -> list[str]:
    """Topological order of the nodes needed by ``outputs`` (ExecutionList-like heuristic).

    Among ready nodes an output node goes first, then a node feeding an output, then a node two
    links away from one, else discovery order.
    """
    needed: list[str] = []
    stack = list(reversed(outputs))
    while stack:
        node_id = stack.pop()
        if node_id in needed or node_id not in prompt:
            continue
        needed.append(node_id)
        stack.extend(reversed([p for p in _links(prompt[node_id]) if p in prompt]))
    deps = {n: {p for p in _links(prompt[n]) if p in prompt} for n in needed}
    users: dict[str, set[str]] = {n: set() for n in needed}
    for node_id, parents in deps.items():
        for parent in parents:
            users[parent].add(node_id)

    def is_output(node_id: str) -> bool:
        return NODES[prompt[node_id]["class_type"]].output_node

    def pick(ready: list[str]) -> str:
        for candidate in ready:
            if is_output(candidate):
                return candidate
        for candidate in ready:
            if any(is_output(u) for u in users[candidate]):
                return candidate
        for candidate in ready:
            if any(is_output(u2) for u in users[candidate] for u2 in users[u]):
                return candidate
        return ready[0]

    order: list[str] = []
    done: set[str] = set()
    while len(order) < len(needed):
        ready = [n for n in needed if n not in done and deps[n] <= done]
        if not ready:  # a cycle: validation does not catch it either; run the rest as is
            ready = [n for n in needed if n not in done]
        node_id = pick(ready)
        order.append(node_id)
        done.add(node_id)
    return order


# --------------------------------------------------------------------------- example graphs


def example_prompt(
    filename_prefix: str = "ComfyUI",
    *,
    width: int = 64,
    height: int = 64,
    color: int = 0,
    load_image: str | None = None,
    save_websocket: bool = False,
    preview: bool = False,
    fail: bool = False,
    delay: float | None = None,
) -> dict[str, Any]:
    """An API-format graph that passes validation (handy for tests and the demo).

    Node ids follow the verified capture of ``comfyui-api.md`` §3.4: ``"1"`` EmptyImage (or
    LoadImage of ``load_image``), ``"2"`` ImageInvert, ``"3"`` SaveImage, optionally ``"4"``
    SaveImageWebsocket, ``"5"`` PreviewImage, ``"6"`` FakeDelay (between 1 and 2) and ``"7"``
    FailNode.
    """
    source: dict[str, Any]
    if load_image is not None:
        source = {"class_type": "LoadImage", "inputs": {"image": load_image}}
    else:
        source = {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": 1, "color": color},
        }
    upstream: list[Any] = ["1", 0]
    prompt: dict[str, Any] = {"1": source}
    if delay is not None:
        prompt["6"] = {"class_type": "FakeDelay", "inputs": {"seconds": delay, "image": ["1", 0]}}
        upstream = ["6", 0]
    prompt["2"] = {"class_type": "ImageInvert", "inputs": {"image": upstream}}
    prompt["3"] = {
        "class_type": "SaveImage",
        "inputs": {"images": ["2", 0], "filename_prefix": filename_prefix},
    }
    if save_websocket:
        prompt["4"] = {"class_type": "SaveImageWebsocket", "inputs": {"images": ["2", 0]}}
    if preview:
        prompt["5"] = {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}}
    if fail:
        prompt["7"] = {"class_type": "FailNode", "inputs": {"image": ["2", 0]}}
    return prompt
