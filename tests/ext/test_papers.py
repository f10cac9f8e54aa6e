"""papers/: every table parses as documented, spot checks against the deck, the loader's API."""
import re
from pathlib import Path

import pandas as pd
import pytest

import qlab
from qlab.ext import papers

REPO = Path(__file__).resolve().parents[2]
PAPERS = REPO / "papers"
ALL = papers.tables()


def _readme_columns(folder: Path) -> dict[str, dict[str, str]]:
    """{csv file name: {column: dtype}} from the '| column | dtype | ...' tables of a README."""
    out, section, header = {}, None, None
    for line in (folder / "README.md").read_text(encoding="utf-8").splitlines():
        m = re.match(r"^## (\S+\.csv)\s*$", line)
        if m:
            section, header = m.group(1), None
            out[section] = {}
            continue
        if line.startswith("## "):
            section = None
            continue
        if section is None or not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == "column":
            header = cells
        elif header is not None and not set(cells[0]) <= set("-: "):
            out[section][cells[0]] = cells[header.index("dtype")]
    return out


def _cell(df, **where):
    mask = pd.Series(True, index=df.index)
    for k, v in where.items():
        mask &= df[k] == v
    rows = df[mask]
    assert len(rows) == 1, (where, rows)
    return rows.iloc[0]


# ------------------------------------------------------------------ files and docs

def test_papers_dir_is_next_to_the_package():
    assert papers.papers_dir() == Path(qlab.__file__).resolve().parents[1] / "papers"
    assert papers.papers_dir() == PAPERS.resolve()


def test_every_csv_has_a_schema_and_the_expected_tables_exist():
    assert set(ALL) == set(papers.SCHEMAS)
    assert ALL == sorted(ALL) and len(ALL) == 7


@pytest.mark.parametrize("name", ALL)
def test_table_parses_with_documented_columns_and_dtypes(name):
    df = papers.table(name)
    schema = papers.SCHEMAS[name]
    assert list(df.columns) == list(schema)
    assert {c: str(t) for c, t in df.dtypes.items()} == schema
    # the raw header in the file is the documented one too
    header = (PAPERS / f"{name}.csv").read_text(encoding="utf-8").splitlines()[0]
    assert header.split(",") == list(schema)
    # the folder README documents the same columns with the same dtypes
    folder, stem = name.split("/")
    documented = _readme_columns(PAPERS / folder)
    assert documented.get(f"{stem}.csv") == schema, f"{folder}/README.md section for {stem}.csv"
    assert len(df) > 0


@pytest.mark.parametrize("folder", sorted(p for p in PAPERS.iterdir() if p.is_dir()))
def test_every_readme_names_each_csv_in_its_folder(folder):
    text = (folder / "README.md").read_text(encoding="utf-8")
    csvs = sorted(p.name for p in folder.glob("*.csv"))
    assert csvs
    for name in csvs:
        assert f"## {name}" in text, name
    index = (PAPERS / "README.md").read_text(encoding="utf-8")
    for name in csvs:
        assert f"`{folder.name}/{Path(name).stem}`" in index, name
    assert "arXiv" in text


def test_relative_accuracies_are_fractions():
    for name in ALL:
        df = papers.table(name)
        for col in ("relative_accuracy", "threshold"):
            if col in df:
                vals = df[col].dropna()
                assert ((vals >= 0) & (vals <= 1)).all(), (name, col)


# ------------------------------------------------------------------ numbers vs the deck

def test_width_tables_spot_checks():
    ext = papers.table("tensorquant/extrinsic_width")
    r = _cell(ext, topology="ResNet 50", W=8)
    assert (r.relative_accuracy, r.best_F) == (0.99, 2)
    r = _cell(ext, topology="Inception V1", W=4)
    assert (r.relative_accuracy, r.best_F) == (0.32, 0)
    assert sorted(ext.W.unique()) == [4, 6, 8, 10, 12] and len(ext) == 20
    intr = papers.table("tensorquant/intrinsic_width")
    r = _cell(intr, topology="Inception V3", W=10)
    assert (r.relative_accuracy, r.best_F) == (0.92, 7)
    r = _cell(intr, topology="ResNet 152", W=16)
    assert (r.relative_accuracy, r.best_F) == (1.0, 6)
    assert sorted(intr.W.unique()) == [8, 10, 12, 14, 16] and len(intr) == 20
    for df in (ext, intr):
        assert list(pd.unique(df.topology)) == ["Inception V1", "Inception V3", "ResNet 50", "ResNet 152"]
        assert df.notna().all().all()
        assert (df.best_F < df.W).all()


def test_lenet_table_and_its_dashes():
    df = papers.table("tensorquant/lenet_intrinsic")
    r = _cell(df, topology="LeNet", W=4)
    assert (r.relative_accuracy, r.best_F) == (0.40, 3)
    r = _cell(df, topology="ResNet 50", W=20)
    assert (r.relative_accuracy, r.best_F) == (1.0, 10)
    missing = df[df.relative_accuracy.isna()]
    assert sorted(missing.topology) == ["Inception V1", "ResNet 50"] and set(missing.W) == {4}
    assert missing.best_F.isna().all()
    assert len(df) == 15


def test_inception_v3_per_layer():
    df = papers.table("tensorquant/inception_v3_per_layer")
    assert len(df) == 63 and df.layer.nunique() == 21
    order = list(df.drop_duplicates("layer").sort_values("position").layer)
    assert order[0] == "Conv2d_1a_3x3" and order[8] == "Mixed_5c" and order[-1] == "Logits"
    assert set(df.threshold) == {1.0, 0.99, 0.9}
    wf = {(r.layer, r.threshold): (r.W, r.F) for r in df.itertuples()}
    assert wf["Conv2d_1a_3x3", 1.0] == (24, 16)
    assert wf["Conv2d_1a_3x3", 0.99] == (16, 12)
    assert wf["Conv2d_1a_3x3", 0.9] == (12, 6)
    assert wf["Mixed_7a", 1.0] == (24, 20)
    for t in (1.0, 0.99, 0.9):
        assert wf["Mixed_7c", t] == (8, 6)
    # the two unreadable cells are missing and say so; the one judged cell is flagged
    miss = df[df.W.isna()]
    assert sorted(zip(miss.layer, miss.threshold)) == [("Mixed_5c", 0.9), ("Mixed_5c", 1.0)]
    assert (miss.reading == "missing").all() and miss.F.isna().all()
    assert list(df[df.reading == "uncertain"].layer) == ["Conv2d_1a_3x3"]
    assert set(df.reading) == {"exact", "separator_restored", "uncertain", "missing"}
    # exact cells are the OCR text itself; restored ones are the OCR digits
    for r in df.itertuples():
        if r.reading == "exact":
            assert r.ocr_text == f"{r.W},{r.F}"
        elif r.reading == "separator_restored":
            assert r.ocr_text.replace(".", "") == f"{r.W}{r.F}"
    known = df.dropna(subset=["W"])
    assert (known.F < known.W).all() and (known.F % 2 == 0).all() and (known.W % 4 == 0).all()
    # a lower threshold never needs a wider word
    for layer, g in known.groupby("layer"):
        ws = g.sort_values("threshold", ascending=False).W.tolist()
        assert ws == sorted(ws, reverse=True), layer


def test_compression_factors():
    df = papers.table("tensorquant/inception_v3_compression")
    assert dict(zip(df.threshold, df.compression)) == {1.0: 3.1, 0.99: 3.2, 0.9: 3.6}


def test_gradient_appendix():
    df = papers.table("tensorquant/gradient_alexnet")
    acc = {(r.W, r.F): r.relative_accuracy for r in df.itertuples()}
    assert acc == {(16, 8): 0.004, (16, 11): 0.847, (16, 12): 0.926, (16, 13): 0.997,
                   (16, 14): 0.745, (32, 16): 1.0}


def test_deep_compression_table1():
    df = papers.table("deep_compression/table1")
    assert len(df) == 8
    vgg = _cell(df, network="VGG-16", variant="compressed")
    assert (vgg.parameters, vgg.parameters_unit, vgg.compression) == (11.3, "MB", 49.0)
    assert (vgg.top1_error, vgg.top5_error) == (31.17, 10.91)
    alex = _cell(df, network="AlexNet", variant="ref")
    assert (alex.top1_error, alex.top5_error, alex.parameters, alex.parameters_unit) == (42.78, 19.73, 240.0, "MB")
    lenet = df[df.network.str.startswith("LeNet")]
    assert lenet.top5_error.isna().all() and df[df.network == "AlexNet"].top5_error.notna().all()
    assert df[df.variant == "ref"].compression.isna().all()
    # the printed rate is ref size / compressed size, rounded
    for net, g in df.groupby("network"):
        ref, comp = _cell(g, variant="ref"), _cell(g, variant="compressed")
        assert ref.parameters_unit == comp.parameters_unit
        assert round(ref.parameters / comp.parameters) == comp.compression, net


# ------------------------------------------------------------------ the loader

def test_wide_round_trips_the_deck_layout():
    deck = """\
Topology     4 bit  6 bit  8 bit  10 bit  12 bit
Inception V1 0.32,0 0.76,2 0.98,2 1.00,4 1.00,4
Inception V3 0.08,0 0.93,2 0.97,2 0.99,4 1.00,6
ResNet 50    0.06,0 0.62,0 0.99,2 1.00,4 1.00,4
ResNet 152   0.07,0 0.55,0 1.00,2 1.00,2 1.00,2"""
    lines = deck.splitlines()
    widths = [int(w) for w in re.findall(r"(\d+) bit", lines[0])]
    rows = {}
    for line in lines[1:]:
        cells = line.split()
        rows[" ".join(cells[:-5])] = cells[-5:]
    got = papers.wide("tensorquant/extrinsic_width")
    assert list(got.index) == list(rows) and list(got.columns) == widths
    assert got.values.tolist() == list(rows.values())
    # and back: the long table is the wide one melted and split
    long = got.rename_axis(index="topology", columns="W").stack().rename("cell").reset_index()
    acc_f = long.cell.str.split(",", expand=True)
    back = pd.DataFrame({"topology": long.topology, "W": long.W.astype("int64"),
                         "relative_accuracy": acc_f[0].astype(float), "best_F": acc_f[1].astype("Int64")})
    orig = papers.table("tensorquant/extrinsic_width")
    pd.testing.assert_frame_equal(back, orig, check_dtype=False)


def test_wide_keeps_dashes_and_the_other_layouts():
    lenet = papers.wide("tensorquant/lenet_intrinsic")
    assert lenet.loc["LeNet"].tolist() == ["0.40,3", "0.90,4", "1.00,6", "1.00,8", "1.00,8"]
    assert lenet.loc["ResNet 50"].tolist() == ["-", "0.00,0", "0.04,6", "0.91,6", "1.00,10"]
    layers = papers.wide("tensorquant/inception_v3_per_layer")
    assert list(layers.columns) == ["100%", "99%", "90%"] and len(layers) == 21
    assert layers.loc["Conv2d_1a_3x3"].tolist() == ["24,16", "16,12", "12,6"]
    assert layers.loc["Mixed_5c"].tolist() == ["-", "12,4", "-"]
    assert papers.wide("tensorquant/inception_v3_compression").iloc[0].tolist() == ["x3.1", "x3.2", "x3.6"]
    grad = papers.wide("tensorquant/gradient_alexnet")
    assert list(grad.columns) == ["16,8", "16,11", "16,12", "16,13", "16,14", "32,16"]
    assert grad.iloc[0].tolist() == ["0.004", "0.847", "0.926", "0.997", "0.745", "1.0"]
    t1 = papers.wide("deep_compression/table1")
    assert t1.loc["VGG-16 Compressed"].tolist() == ["31.17%", "10.91%", "11.3 MB", "49x"]
    assert t1.loc["LeNet-5 Ref"].tolist() == ["0.80%", "-", "1720 KB", ""]


def test_unknown_name_lists_known_names_nearest_first():
    with pytest.raises(ValueError) as e:
        papers.table("tensorquant/extrinsic_widht")
    msg = str(e.value)
    listed = msg.split("nearest first): ")[1].split(", ")
    assert listed[0] == "tensorquant/extrinsic_width" and sorted(listed) == ALL
    with pytest.raises(ValueError, match="known"):
        papers.wide("nope")
    # the .csv suffix is forgiven
    assert len(papers.table("tensorquant/gradient_alexnet.csv")) == 6


def test_missing_papers_folder_names_the_path(tmp_path):
    where = tmp_path / "nowhere" / "papers"
    with pytest.raises(FileNotFoundError, match=re.escape(str(where))):
        papers.tables(root=where)
    with pytest.raises(FileNotFoundError, match="papers"):
        papers.table("tensorquant/extrinsic_width", root=where)


def test_explicit_root_and_schema_mismatch(tmp_path):
    (tmp_path / "tensorquant").mkdir()
    (tmp_path / "tensorquant" / "gradient_alexnet.csv").write_text("W,F,acc\n16,8,0.004\n")
    assert papers.tables(root=tmp_path) == ["tensorquant/gradient_alexnet"]
    with pytest.raises(ValueError, match="documented"):
        papers.table("tensorquant/gradient_alexnet", root=tmp_path)
