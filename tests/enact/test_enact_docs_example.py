"""The code in docs/enact.md and the README runs as written (every ```python block, in order)."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "enact.md"


def test_docs_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    assert len(blocks) >= 2, f"expected the usage examples in {DOC}"
    namespace = {"__name__": "docs_example"}
    for block in blocks:
        exec(compile(block, str(DOC), "exec"), namespace)
    # what the examples promise
    assert namespace["stats"]["key_len_before"] == 20 * 30
    assert namespace["stats"]["key_len_after"] < 20 * 30
    assert isinstance(namespace["model"].encoder.layers[0].self_attn, namespace["nn"].MultiheadAttention)


def test_readme_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Use ENACT in your own model"):]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README's 'Use ENACT in your own model' section has no python example"
    namespace = {"__name__": "readme_example"}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert namespace["out"].shape == (850, 2, 256)
    assert namespace["attn"].last_stats["key_len_after"] < 850
