"""`tunevlseg predict` never writes over its input (issue 16)."""

from __future__ import annotations

import pytest

from benchmark import cli


@pytest.mark.parametrize("overlay", [False, True])
def test_predict_refuses_to_write_into_its_input_folder(tmp_path, capsys, overlay):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(images / "a.png")
    before = (images / "a.png").read_bytes()
    for out in (images, images / "." , images / ".." / "images"):
        code = cli.main(["predict", "--artifact", str(tmp_path / "no-artifact"), "--images", str(images),
                         "--out", str(out)] + (["--overlay"] if overlay else []))
        assert code == 2
        assert "input folder" in capsys.readouterr().err
    # a single input file with --out its own folder
    code = cli.main(["predict", "--artifact", str(tmp_path / "x"), "--images", str(images / "a.png"),
                     "--out", str(images)])
    assert code == 2 and "input folder" in capsys.readouterr().err
    assert (images / "a.png").read_bytes() == before


def test_predict_refuses_an_output_file_that_is_an_input(tmp_path, capsys):
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    Image.new("RGB", (8, 8)).save(images / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    (out / "a.png").symlink_to(images / "a.png")  # the mask file would be the input image itself
    code = cli.main(["predict", "--artifact", str(tmp_path / "x"), "--images", str(images), "--out", str(out)])
    assert code == 2 and "would overwrite the input image" in capsys.readouterr().err
