"""The language model in the real daemons: `edgecascade cloud run` with llm_dirs and
`edgecascade edge run` with llm_dir and openai_listen, on loopback. The SDK's generate and the
OpenAI endpoint both answer; bad input is refused and the agent keeps serving."""

from __future__ import annotations

import openai
import pytest

from edgecascade.processes import InProcessDaemon, free_port
from shared.errors import InvalidInputError
from shared.llm_policy import LLMPolicy, save_llm_policy
from shared.sdk import Client
from tests.helpers.bundles import make_softmax_bundle


def test_daemons_generate_over_grpc_and_openai(tmp_path, tiny_edge, long_cloud):
    import shutil

    edge_lm = tmp_path / "edge-lm"
    shutil.copytree(tiny_edge, edge_lm)
    save_llm_policy(edge_lm, LLMPolicy(model_name="edge", threshold=1.0, min_tokens=2))   # defer everything
    bundles = {"edge": make_softmax_bundle(tmp_path / "edge", name="toy-edge", scale=1.0),
               "cloud": make_softmax_bundle(tmp_path / "cloud", name="toy-cloud", scale=10.0)}
    http_port = free_port()
    cloud_settings = {"model_dirs": [str(bundles["cloud"])], "llm_dirs": [str(long_cloud)]}
    with InProcessDaemon("cloud", cloud_settings, tmp_path, name="cloud") as cloud:
        edge_settings = {"bundle_dir": str(bundles["edge"]), "cloud_target": cloud.target, "llm_dir": str(edge_lm),
                         "openai_listen": f"127.0.0.1:{http_port}"}
        with InProcessDaemon("edge", edge_settings, tmp_path, name="edge") as edge:
            with Client(edge.target, timeout_s=60) as client:
                stream = client.generate("the cat sat", max_new_tokens=6)
                chunks = list(stream)
                with pytest.raises(InvalidInputError, match="not valid UTF-8"):
                    list(client.generate(b"\xff\xfe", max_new_tokens=4))
                with pytest.raises(InvalidInputError, match="max_new_tokens"):
                    list(client.generate("x", max_new_tokens=5000))
                again = client.generate("the cat sat", max_new_tokens=6)
                list(again)
            http = openai.OpenAI(base_url=f"http://127.0.0.1:{http_port}/v1", api_key="unused", max_retries=0)
            model_id = http.models.list().data[0].id
            completion = http.completions.create(model=model_id, prompt="the cat sat", max_tokens=6, temperature=0)
            http.close()
    assert any(c.restart for c in chunks) and stream.summary.served_by == "cloud"
    assert again.text == stream.text and again.summary.cloud_tokens == stream.summary.cloud_tokens
    assert completion.choices[0].text == stream.text
    assert completion.model_extra["edgecascade"]["served_by"] == "cloud"
