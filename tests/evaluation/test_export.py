"""jax.export round trip of the inference function on CPU."""

import json

import numpy as np
import pytest
from helpers import FIXTURES, tiny_config

from rankseg_jax import models
from rankseg_jax.evaluation import inference

pytest.importorskip("flatbuffers")  # jax's serializer needs it
pytest.importorskip("torch")
from rankseg_jax.convert.tables import mmseg  # noqa: E402
from rankseg_jax.evaluation import export  # noqa: E402


@pytest.mark.parametrize("kind,mode,platforms", [("rankseg", "slide", ("cpu", "cuda", "tpu")),
                                                 ("baseline", "whole", None)])
def test_export_roundtrip_matches(tmp_path, kind, mode, platforms):
    """The artifact (lowered for several platforms on this CPU-only host, or for the current
    one) runs on CPU like the Inferencer and carries its metadata."""
    config = tiny_config(kind)
    config.test.mode, config.test.stride = mode, (32, 32)
    model = models.build_model(config)
    mmseg.load_official_checkpoint(model, FIXTURES / f"{kind}.pth", config)
    images = np.load(FIXTURES / "io.npz")["images"].transpose(0, 2, 3, 1)
    path = tmp_path / "model.jax"
    exported = export.export_inference(config, model, (64, 64), platforms=platforms)
    meta = export.export_metadata(config, model, (64, 64), exported)
    export.save_exported(exported, path, meta)
    run, loaded = export.load_exported(path)
    assert loaded == json.loads(json.dumps(meta))
    assert loaded["platforms"] == list(platforms or ("cpu",))
    assert loaded["input_size"] == [64, 64] and loaded["num_classes"] == 20
    assert loaded["kappa"] == (8 if kind == "rankseg" else 0)
    assert loaded["mean"] == [127.5] * 3 and len(loaded["class_names"]) == 20
    with pytest.raises(FileExistsError, match="--overwrite"):
        export.save_exported(exported, path, meta)
    export.save_exported(exported, path, {"x": 1}, overwrite=True)
    assert export.read_artifact(path)[0] == {"x": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.jax"]  # no temp file left
    out = run(images)  # symbolic batch: B=2 and B=1 from one artifact
    one = run(images[1:])
    eng = inference.Inferencer(config, model)
    for i in range(2):
        res = eng.predict([(images[i], False)], (64, 64))
        np.testing.assert_array_equal(np.asarray(out["pred"][i]), res.pred)
        if kind == "rankseg":
            np.testing.assert_array_equal(np.asarray(out["topk_index"][i]), res.topk)
            np.testing.assert_allclose(np.asarray(out["image_logits"][i]), res.image_logits,
                                       atol=1e-5)
    np.testing.assert_array_equal(np.asarray(one["pred"][0]), np.asarray(out["pred"][1]))
