import pandas as pd
import pytest

from deepfake_lightning.data.index import UNLABELED, DataError, read_index


def _write(root, text, name="train.csv"):
    (root / name).write_bytes(text.encode() if isinstance(text, str) else text)
    return root / name


def _touch(root, *paths):
    for p in paths:
        (root / p).parent.mkdir(parents=True, exist_ok=True)
        (root / p).write_bytes(b"x")


def test_reads_kaggle_train_csv(kaggle_root):
    df = read_index(kaggle_root / "train.csv", kaggle_root, "file_name", "label", "group")
    raw = pd.read_csv(kaggle_root / "train.csv", index_col=0)
    assert list(df.columns) == ["path", "label", "group"]
    assert df["path"].tolist() == raw["file_name"].tolist()  # CSV order kept, index column dropped
    assert df["label"].tolist() == raw["label"].tolist()
    assert df["label"].dtype == "int64"


def test_unlabeled_test_csv_gets_minus_one(tmp_path):
    _touch(tmp_path, "test_data_v2/a.jpg", "test_data_v2/b.jpg")
    csv = _write(tmp_path, "id\ntest_data_v2/a.jpg\ntest_data_v2/b.jpg\n", "test.csv")
    df = read_index(csv, tmp_path, "id", "label", require_labels=False)
    assert df["label"].tolist() == [UNLABELED, UNLABELED]


def test_bom_crlf_and_extra_columns_are_fine(tmp_path):
    _touch(tmp_path, "a.jpg", "b.jpg")
    csv = _write(tmp_path, b"\xef\xbb\xbf,file_name,label,extra\r\n0,a.jpg,1,x\r\n1,b.jpg,0,y\r\n")
    df = read_index(csv, tmp_path, "file_name")
    assert df["path"].tolist() == ["a.jpg", "b.jpg"] and df["label"].tolist() == [1, 0]


def test_missing_column_names_file_and_column(tmp_path):
    csv = _write(tmp_path, ",file,label\n0,a.jpg,1\n")
    with pytest.raises(DataError, match=r"train\.csv: missing required column\(s\) \['file_name'\]"):
        read_index(csv, tmp_path, "file_name")


@pytest.mark.parametrize("bad", ["2", "", "yes", "-1", "0.5"])
def test_bad_labels_name_the_line(tmp_path, bad):
    _touch(tmp_path, "a.jpg", "b.jpg")
    csv = _write(tmp_path, f",file_name,label\n0,a.jpg,1\n1,b.jpg,{bad}\n")
    with pytest.raises(DataError, match=r"line 3: 'b\.jpg"):
        read_index(csv, tmp_path, "file_name")


def test_duplicates_are_listed(tmp_path):
    _touch(tmp_path, "a.jpg")
    csv = _write(tmp_path, ",file_name,label\n0,a.jpg,1\n1,a.jpg,1\n")
    with pytest.raises(DataError, match=r"(?s)duplicate 'file_name'.*line 2.*line 3"):
        read_index(csv, tmp_path, "file_name")


def test_missing_files_are_listed_with_count(tmp_path):
    _touch(tmp_path, "a.jpg")
    csv = _write(tmp_path, ",file_name,label\n0,a.jpg,1\n1,gone.jpg,0\n2,gone2.jpg,0\n")
    with pytest.raises(DataError, match=r"(?s)2 image file\(s\) listed but not found.*line 3: 'gone\.jpg'.*line 4"):
        read_index(csv, tmp_path, "file_name")


@pytest.mark.parametrize("path", ["../outside.jpg", "/etc/passwd", "a/../../outside.jpg", "C:\\x.jpg", "..\\x.jpg"])
def test_paths_escaping_the_root_are_refused(tmp_path, path):
    _touch(tmp_path, "a.jpg")
    csv = _write(tmp_path, f",file_name,label\n0,a.jpg,1\n1,{path},0\n")
    with pytest.raises(DataError, match="(?s)stay inside the data root.*line 3"):
        read_index(csv, tmp_path, "file_name")


def test_inner_dotdot_that_stays_inside_is_allowed(tmp_path):
    _touch(tmp_path, "train_data/a.jpg")
    csv = _write(tmp_path, ",file_name,label\n0,train_data/../train_data/a.jpg,1\n")
    assert read_index(csv, tmp_path, "file_name")["label"].tolist() == [1]


def test_long_listings_are_truncated(tmp_path):
    lines = "".join(f"{i},f{i}.jpg,1\n" for i in range(30))
    csv = _write(tmp_path, ",file_name,label\n" + lines)
    with pytest.raises(DataError, match=r"(?s)30 image file\(s\).*and 10 more"):
        read_index(csv, tmp_path, "file_name")


def test_symbolic_links_placed_under_the_root_are_followed_but_paths_cannot_leave_it(tmp_path):
    # A folder on another disk linked into the data root (CIFAKE on a second disk) is the user's choice: followed.
    root, outside = tmp_path / "root", tmp_path / "other_disk"
    _touch(root, "train_data/a.jpg")
    _touch(outside, "images/b.jpg", "c.jpg")
    (root / "linked_dir").symlink_to(outside / "images", target_is_directory=True)
    (root / "train_data" / "c.jpg").symlink_to(outside / "c.jpg")
    csv = _write(root, ",file_name,label\n0,train_data/a.jpg,1\n1,linked_dir/b.jpg,0\n2,train_data/c.jpg,0\n")
    assert read_index(csv, root, "file_name")["path"].tolist() == [
        "train_data/a.jpg",
        "linked_dir/b.jpg",
        "train_data/c.jpg",
    ]
    # The paths themselves still cannot leave the root: `..` and absolute paths are refused, naming the rows.
    csv = _write(root, f",file_name,label\n0,train_data/a.jpg,1\n1,../other_disk/c.jpg,0\n2,{outside / 'c.jpg'},0\n")
    with pytest.raises(DataError, match=r"(?s)stay inside the data root.*line 3: '\.\./other_disk/c\.jpg'.*line 4"):
        read_index(csv, root, "file_name")
