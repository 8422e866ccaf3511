import json
import subprocess
import sys

from t2i.cli import main


def test_help_lists_examples():
    out = subprocess.run([sys.executable, "-m", "t2i.cli", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "examples:" in out.stdout and "data" in out.stdout


def test_data_shapes_then_inspect(tmp_path, capsys):
    out = tmp_path / "shapes"
    assert main(["data", "shapes", "--out", str(out), "--num", "12", "--size", "32", "--split", "test"]) == 0
    rows = [json.loads(x) for x in (out / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and len(list(out.glob("*.png"))) == 12
    assert set(rows[0]) == {"file_name", "text", "attributes"} and len(rows[0]["text"]) == 5
    capsys.readouterr()
    assert main(["data", "inspect", str(out), "--grid", str(tmp_path / "g.png"), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["images"] == 12 and stats["captions"] == 60 and stats["vocabulary"] > 20
    assert (tmp_path / "g.png").is_file()
    assert main(["data", "inspect", "shapes", "--num", "20"]) == 0
    assert "images:             20" in capsys.readouterr().out


def test_inspect_reports_unreadable(tmp_path, capsys):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "bad.png").write_bytes(b"nope")
    rows = [{"file_name": "ok.png", "text": "fine"}, {"file_name": "bad.png", "text": "broken"}]
    (tmp_path / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["data", "inspect", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "unreadable images:  1" in out and "bad.png" in out


def test_bad_path_is_a_clear_error(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no known layout" in err and "imagefolder" in err and "Traceback" not in err


def test_data_encode_fills_the_cache(tmp_path, capsys):
    assert main(["data", "encode", "shapes", "--num", "3", "--cache-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "15 captions" in out and "holds 15" in out
    assert list(tmp_path.glob("*/shard-*.safetensors"))
