"""Bad input: DataError naming file, line and field, or a counted skip by reason."""
import json
import pickle

import pytest

from recjax.data import loaders
from recjax.data.dataset import DatasetBuilder
from recjax.data.errors import DataError, ErrorPolicy
from recjax.data.prepare import build_prepared
from test_data_loaders import jsonl, literals, ml100k, write  # pylint: disable=g-bad-import-order


def test_data_error_message_and_fields():
  e = DataError("/data/reviews.json.gz", 17, "asin", "missing")
  assert str(e) == "/data/reviews.json.gz:17: field 'asin': missing"  # full path: the user can open it
  assert (e.path, e.line, e.field) == ("/data/reviews.json.gz", 17, "asin")
  assert str(DataError("u.data", None, None, "empty file")) == "u.data: empty file"
  assert str(pickle.loads(pickle.dumps(e))) == str(e)


def test_error_policy_raises_or_counts():
  with pytest.raises(DataError, match="x.csv:3: field 'time': bad"):
    ErrorPolicy("raise").error("x.csv", 3, "time", "bad", "bad_timestamp")
  policy = ErrorPolicy("skip")
  policy.error("x.csv", 3, "time", "bad", "bad_timestamp")
  policy.error("x.csv", 4, "time", "bad", "bad_timestamp")
  assert policy.skipped == {"bad_timestamp": 2}
  with pytest.raises(ValueError, match="on_error"):
    ErrorPolicy("ignore")


GOOD_REVIEW = {"reviewerID": "A1", "asin": "B01", "overall": 5.0,
               "unixReviewTime": 1400000000}
META = literals([{"asin": "B01", "title": "Mascara"},
                 {"asin": "B02", "title": "Wash"}])


def _amazon(tmp_path, review_lines: bytes, meta=META):
  write(tmp_path / "reviews_Beauty_5.json.gz", review_lines)
  write(tmp_path / "meta_Beauty.json.gz", meta)
  return tmp_path


def _good(**over):
  return json.dumps({**GOOD_REVIEW, **over}).encode() + b"\n"


def _without(field):
  rec = dict(GOOD_REVIEW)
  del rec[field]
  return json.dumps(rec).encode() + b"\n"


# (name, review bytes for line 2, expected message part, skip reason)
AMAZON_CASES = [
    ("malformed_json", b"{not json\n", r"reviews_Beauty_5.json.gz:2: not a JSON",
     "malformed_line"),
    ("not_an_object", b"[1, 2]\n", r"reviews_Beauty_5.json.gz:2: not a record",
     "malformed_line"),
    ("missing_asin", _without("asin"),
     r"reviews_Beauty_5.json.gz:2: field 'asin': missing", "missing_field:asin"),
    ("missing_user", _without("reviewerID"),
     r"reviews_Beauty_5.json.gz:2: field 'reviewerID': missing",
     "missing_field:reviewerID"),
    ("bad_timestamp", _good(unixReviewTime="last tuesday"),
     r"reviews_Beauty_5.json.gz:2: field 'unixReviewTime': cannot parse",
     "bad_timestamp"),
    ("bad_rating", _good(overall="five"),
     r"reviews_Beauty_5.json.gz:2: field 'overall': cannot parse", "bad_rating"),
    ("unknown_item", _good(asin="B77"),
     r"reviews_Beauty_5.json.gz:2: field 'asin': unknown item id 'B77'",
     "unknown_item"),
    ("bad_encoding", b'{"reviewerID": "A\xff\xfe", "asin": "B02"}\n',
     r"reviews_Beauty_5.json.gz:2: not valid utf-8", "bad_encoding"),
]


@pytest.mark.parametrize("name,line2,message,reason", AMAZON_CASES,
                         ids=[c[0] for c in AMAZON_CASES])
def test_amazon_bad_review_line(tmp_path, name, line2, message, reason):
  del name
  lines = _good() + line2 + _good(asin="B02", unixReviewTime=1400000001)
  d = _amazon(tmp_path, lines)
  with pytest.raises(DataError, match=message):
    loaders.load("amazon2014", d)
  data = loaders.load("amazon2014", d, on_error="skip")
  assert dict(data.skipped) == {reason: 1}
  assert data.num_interactions == 2
  # ... and the count reaches stats.json's "skipped".
  prepared = build_prepared("amazon2014", str(d), kcore=0, on_error="skip")
  assert prepared.stats["skipped"] == {reason: 1}


def test_amazon_meta_python_literal_errors(tmp_path):
  meta = (literals([{"asin": "B01", "title": "Mascara"}]) +
          "{'asin': 'B02', 'title': 'Wash'\n"  # truncated literal
          "{'title': 'no asin'}\n")
  d = _amazon(tmp_path, _good(), meta)
  with pytest.raises(DataError, match=r"meta_Beauty.json.gz:2: not a Python "
                     "literal"):
    loaders.load("amazon2014", d, all_meta=True)
  data = loaders.load("amazon2014", d, on_error="skip", all_meta=True)
  assert data.skipped == {"malformed_line": 1, "missing_field:asin": 1}


def test_unknown_item_in_movielens_names_file_line_field(tmp_path):
  d = ml100k(tmp_path, u_data="1\t1\t5\t10\n1\t99\t5\t11\n1\t2\t4\t12\n")
  with pytest.raises(DataError, match=r"u.data:2: field 'item': unknown item "
                     "id '99'"):
    loaders.load("movielens", d)
  assert loaders.load("movielens", d, on_error="skip").skipped == {
      "unknown_item": 1}


@pytest.mark.parametrize("text,message,reason", [
    ("1\t1\t5\n", r"u.data:1: expected 4 fields", "malformed_line"),
    ("1\t1\tfive\t10\n", r"u.data:1: field 'rating': not a number",
     "bad_rating"),
    ("1\t1\t5\tsoon\n", r"u.data:1: field 'timestamp': not a time",
     "bad_timestamp"),
])
def test_movielens_bad_lines(tmp_path, text, message, reason):
  d = ml100k(tmp_path, u_data=text + "2\t2\t3\t20\n")
  with pytest.raises(DataError, match=message):
    loaders.load("movielens", d)
  data = loaders.load("movielens", d, on_error="skip")
  assert data.skipped == {reason: 1} and data.num_interactions == 1


@pytest.mark.parametrize("on_error", ["raise", "skip"])
def test_empty_file_is_always_an_error(tmp_path, on_error):
  d = ml100k(tmp_path, u_data="\n")
  with pytest.raises(DataError, match=r"u.data: empty file"):
    loaders.load("movielens", d, on_error=on_error)
  write(tmp_path / "log.csv", "user,item,time\n")
  with pytest.raises(DataError, match=r"log.csv: no records after the header"):
    loaders.load("csv", tmp_path / "log.csv", on_error=on_error)


def test_everything_skipped_is_an_error(tmp_path):
  d = ml100k(tmp_path, u_data="1\t1\tx\t1\n2\t2\ty\t2\n")
  with pytest.raises(DataError, match="no interactions left.*bad_rating"):
    loaders.load("movielens", d, on_error="skip")


def test_csv_missing_and_bad_fields(tmp_path):
  write(tmp_path / "log.csv", "user,item,time,rating\nu1,,5,\nu1,a,xx,\n"
        "u1,a,1,4\nu1,b,2,3,extra\nu2,b,2021-02-30,1\n")
  with pytest.raises(DataError, match=r"log.csv:2: field 'item': missing"):
    loaders.load("csv", tmp_path / "log.csv")
  data = loaders.load("csv", tmp_path / "log.csv", on_error="skip")
  assert data.skipped == {"missing_field:item": 1, "bad_timestamp": 2,
                          "malformed_line": 1}
  assert data.num_interactions == 1


def test_steam_and_recbole_fields(tmp_path):
  write(tmp_path / "steam_games.json.gz", literals([{"id": "1", "app_name": "G"}]))
  write(tmp_path / "steam_reviews.json.gz", literals([
      {"username": "u", "product_id": "1", "date": "2017-01-01"},
      {"username": "u", "date": "2017-01-02"}]))
  with pytest.raises(DataError, match=r"steam_reviews.json.gz:2: field "
                     "'product_id': missing"):
    loaders.load("steam", tmp_path)
  d = tmp_path / "rb"
  d.mkdir()
  write(d / "rb.inter", "user_id:token\titem_id:token\ttimestamp:float\n"
        "u\ta\t1\nu\tb\tnot-a-time\n")
  with pytest.raises(DataError, match=r"rb.inter:3: field 'timestamp'"):
    loaders.load("recbole", d)
  write(d / "rb.inter", "user_id\titem_id\nu\ta\n")
  with pytest.raises(DataError, match=r"rb.inter:1: field 'user_id'"):
    loaders.load("recbole", d)


def test_llara_discontinuous_sequence(tmp_path):
  write(tmp_path / "id2name.txt", "0::A\n1::B\n2::C\n")
  write(tmp_path / "train.jsonl", jsonl([
      {"seq": [], "next": 0}, {"seq": [0], "next": 1},
      {"seq": [0, 2], "next": 2}]))
  with pytest.raises(DataError, match=r"train.jsonl:3: field 'seq': does not "
                     "continue"):
    loaders.load("lastfm_llara", tmp_path)


def test_builder_title_and_duplicate_policies():
  b = DatasetBuilder("t", ErrorPolicy("raise"))
  assert b.add_item("a", "A")
  assert not b.add_item("a", "Again")
  assert not b.add_item("b", "  ")
  b.add_interaction("u", "a", 1)
  b.add_interaction("u", "b", 2)
  data = b.build()
  assert data.titles == ["A"] and data.num_interactions == 1
  assert data.skipped == {"duplicate_item": 1, "missing_title": 1,
                          "item_without_title": 1}
  b = DatasetBuilder("t", missing_title="id")
  b.add_item("b", None)
  b.add_interaction("u", "b", 1)
  assert b.build().titles == ["b"]


def test_unknown_item_line_numbers_on_the_fast_path(tmp_path):
  # A clean log goes through the numpy fast path; lines must still be exact.
  write(tmp_path / "items.csv", "id,title\na,A\nb,B\n")
  write(tmp_path / "log.csv", "uid,iid,ts\nu,a,1\nu,b,2\nu,zz,3\nv,a,4\n")
  options = {"columns": "user=uid,item=iid,time=ts",
             "items": str(tmp_path / "items.csv")}
  with pytest.raises(DataError, match=r"log.csv:4: field 'iid': unknown item "
                     "id 'zz'"):
    loaders.load("csv", tmp_path / "log.csv", **options)
  data = loaders.load("csv", tmp_path / "log.csv", on_error="skip", **options)
  assert data.skipped == {"unknown_item": 1} and data.num_interactions == 3
