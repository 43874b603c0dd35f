"""The code in docs/enact.md runs as written (every ```python block, in order, one namespace)."""
import re
from pathlib import Path

DOC = Path(__file__).resolve().parents[2] / "docs" / "enact.md"


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
