"""Every loader on tiny files in its real on-disk format (gzip where the real one is)."""
import gzip
import json
import math

import numpy as np
import pytest

from recjax.data import loaders
from recjax.data.dataset import DatasetBuilder
from recjax.data.errors import DataError
from recjax.data.loaders import _io


def write(path, text, *, encoding="utf-8"):
  data = text.encode(encoding) if isinstance(text, str) else text
  if str(path).endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(data)
  else:
    path.write_bytes(data)
  return path


def jsonl(rows):
  return "".join(json.dumps(r) + "\n" for r in rows)


def literals(rows):
  return "".join(repr(r) + "\n" for r in rows)


def log_of(data):
  """[(user id, item id, timestamp, rating or None)] in dataset row order."""
  return [(data.user_ids[u], data.item_ids[i], float(t),
           None if math.isnan(r) else float(r))
          for u, i, t, r in zip(data.users, data.items, data.timestamps,
                                data.ratings)]


# ---- MovieLens -------------------------------------------------------------
def _flags(*on):
  return "|".join("1" if g in on else "0" for g in range(19))


def ml100k(tmp_path, u_data=None, genre_file=True):
  d = tmp_path / "ml-100k"
  d.mkdir()
  write(d / "u.item",
        f"1|Toy Story (1995)|01-Jan-1995||http://x|{_flags(3, 4, 5)}\n"
        f"2|GoldenEye (1995)|01-Jan-1995||http://x|{_flags(1, 2, 16)}\n"
        f"3|Caf\xe9 Society (1999)|01-Jan-1999||http://x|{_flags(0)}\n",
        encoding="latin-1")
  if genre_file:
    write(d / "u.genre", "".join(f"G{i}|{i}\n" for i in range(19)))
  write(d / "u.data", u_data if u_data is not None else
        "10\t1\t5\t881250949\n10\t2\t3\t881250950\n11\t3\t4\t881250000\n")
  return d


def test_movielens_100k(tmp_path):
  data = loaders.load("movielens", ml100k(tmp_path, genre_file=False))
  assert data.name == "ml100k"
  assert data.item_ids == ["1", "2", "3"]
  assert data.titles == ["Toy Story (1995)", "GoldenEye (1995)",
                         "Caf\u00e9 Society (1999)"]
  assert data.categories[0] == ["Animation", "Children's", "Comedy"]
  assert data.categories[1] == ["Action", "Adventure", "Thriller"]
  assert data.categories[2] == []  # only 'unknown'
  assert log_of(data) == [("10", "1", 881250949.0, 5.0),
                          ("10", "2", 881250950.0, 3.0),
                          ("11", "3", 881250000.0, 4.0)]


def test_movielens_100k_genre_names_from_u_genre(tmp_path):
  data = loaders.load("movielens", ml100k(tmp_path))
  assert data.categories[0] == ["G3", "G4", "G5"]


def test_movielens_1m(tmp_path):
  write(tmp_path / "movies.dat",
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Am\xe9lie (2001)::Comedy|Romance\n", encoding="latin-1")
  write(tmp_path / "ratings.dat", "1::1::5::978300760\n1::2::3::978302109\n"
        "2::2::4::978300000\n")
  data = loaders.load("movielens", tmp_path)
  assert data.name == "ml1m"
  assert data.titles == ["Toy Story (1995)", "Am\u00e9lie (2001)"]
  assert data.categories == [["Animation", "Children's", "Comedy"],
                             ["Comedy", "Romance"]]
  assert log_of(data)[1] == ("1", "2", 978302109.0, 3.0)
  assert data.num_users == 2 and data.num_interactions == 3


def test_movielens_20m_csv(tmp_path):
  write(tmp_path / "movies.csv", 'movieId,title,genres\n'
        '1,Toy Story (1995),Adventure|Animation\n'
        '2,"American President, The (1995)",(no genres listed)\n')
  write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n"
        "1,2,3.5,1112486027\n1,1,4.0,1112484676\n")
  data = loaders.load("movielens", tmp_path)
  assert data.titles[1] == "American President, The (1995)"
  assert data.categories == [["Adventure", "Animation"], []]
  assert log_of(data) == [("1", "2", 1112486027.0, 3.5),
                          ("1", "1", 1112484676.0, 4.0)]


def test_movielens_unknown_directory_lists_expected_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="u.data"):
    loaders.load("movielens", tmp_path)


# ---- Amazon ----------------------------------------------------------------
def amazon2014(tmp_path, reviews=None, meta=None):
  reviews = reviews if reviews is not None else jsonl([
      {"reviewerID": "A1", "asin": "B01", "overall": 5.0,
       "unixReviewTime": 1400000000, "reviewText": "great"},
      {"reviewerID": "A1", "asin": "B02", "overall": 3.0,
       "unixReviewTime": 1400000100},
      {"reviewerID": "A2", "asin": "B01", "overall": 4.0,
       "unixReviewTime": 1300000000},
      {"reviewerID": "A2", "asin": "B03", "overall": 2.0,
       "unixReviewTime": 1300000001},
  ])
  meta = meta if meta is not None else literals([
      {"asin": "B01", "title": "Great Lash Mascara &amp; Primer",
       "categories": [["Beauty", "Makeup", "Eyes"], ["Beauty", "Tools"]],
       "brand": "Maybelline", "description": "Very black.", "price": 4.99,
       "related": {"also_bought": ["B02"]}},
      {"asin": "B02", "title": "Oil-Free Acne Wash", "categories": [["Beauty"]],
       "price": 7.5},
      {"asin": "B03", "categories": [["Beauty"]]},  # no title
      {"asin": "B99", "title": "Never reviewed"},
  ])
  write(tmp_path / "reviews_Beauty_5.json.gz", reviews)
  write(tmp_path / "meta_Beauty.json.gz", meta)
  return tmp_path


def test_amazon2014(tmp_path):
  data = loaders.load("amazon2014", amazon2014(tmp_path))
  assert data.name == "amazon2014_Beauty"
  assert data.item_ids == ["B01", "B02"]  # B03 has no title, B99 unreviewed
  assert data.item(0) == {
      "id": "B01", "title": "Great Lash Mascara & Primer",
      "categories": ["Beauty", "Makeup", "Eyes", "Tools"],
      "brand": "Maybelline", "description": "Very black.", "price": 4.99}
  assert data.item(1)["brand"] is None
  assert log_of(data) == [("A1", "B01", 1400000000.0, 5.0),
                          ("A1", "B02", 1400000100.0, 3.0),
                          ("A2", "B01", 1300000000.0, 4.0)]
  assert data.skipped == {"missing_title": 1, "item_without_title": 1}


def test_amazon2014_from_reviews_file_and_title_fallback(tmp_path):
  amazon2014(tmp_path)
  data = loaders.load("amazon2014", tmp_path / "reviews_Beauty_5.json.gz",
                      missing_title="id", all_meta=True)
  assert data.item_ids == ["B01", "B02", "B03", "B99"]
  assert data.titles[2] == "B03"
  assert data.num_interactions == 4


def test_amazon2014_several_categories_need_category_option(tmp_path):
  amazon2014(tmp_path)
  write(tmp_path / "reviews_Toys_5.json.gz", jsonl([
      {"reviewerID": "A1", "asin": "T1", "overall": 1,
       "unixReviewTime": 1}]))
  write(tmp_path / "meta_Toys.json.gz", literals([{"asin": "T1",
                                                   "title": "Yo-yo"}]))
  with pytest.raises(ValueError, match="category"):
    loaders.load("amazon2014", tmp_path)
  data = loaders.load("amazon2014", tmp_path, category="Toys")
  assert data.titles == ["Yo-yo"]


def test_amazon2018(tmp_path):
  write(tmp_path / "All_Beauty_5.json.gz", jsonl([
      {"overall": 5.0, "verified": True, "reviewerID": "U1", "asin": "X1",
       "unixReviewTime": 1500000000, "style": {"Size:": "1"}},
      {"overall": 1.0, "reviewerID": "U1", "asin": "X2",
       "unixReviewTime": 1500000001}]))
  write(tmp_path / "meta_All_Beauty.json.gz", jsonl([
      {"asin": "X1", "title": "Rose Lip Balm", "category": ["Beauty", "Lips"],
       "brand": "Petal", "description": ["Soft.", "Tinted."],
       "price": "$9.99"},
      {"asin": "X2", "title": "Car Wax", "category": [], "price":
       "$1.00 - $2.50", "description": []}]))
  data = loaders.load("amazon2018", tmp_path)
  assert data.name == "amazon2018_All_Beauty"
  assert data.item(0) == {"id": "X1", "title": "Rose Lip Balm",
                          "categories": ["Beauty", "Lips"], "brand": "Petal",
                          "description": "Soft. Tinted.", "price": 9.99}
  assert data.prices[1] == 1.0 and data.descriptions[1] is None
  assert log_of(data) == [("U1", "X1", 1500000000.0, 5.0),
                          ("U1", "X2", 1500000001.0, 1.0)]


# ---- Steam -----------------------------------------------------------------
def test_steam(tmp_path):
  write(tmp_path / "steam_games.json.gz", literals([
      {"publisher": "Kotoshiro", "genres": ["Action", "Casual"],
       "app_name": "Lost Summoner Kitty", "price": 4.99, "id": "761140",
       "developer": "Kotoshiro", "early_access": False},
      {"app_name": "Free Thing", "genres": ["Indie"], "price": "Free To Play",
       "id": "643980", "publisher": "Secret Level"},
      {"title": "Only A Title", "tags": ["RPG"], "price": "Third-party",
       "id": "5"},
  ]))
  write(tmp_path / "steam_reviews.json.gz", literals([
      {"username": "Chaos Syren", "hours": 0.1, "products": 41,
       "product_id": "643980", "page_order": 0, "date": "2017-12-17",
       "text": "This would not be acceptable", "early_access": False},
      {"username": "Chaos Syren", "product_id": "761140", "date": "2018-1-2",
       "text": "ok"},
      {"username": "Other", "product_id": "5", "date": "2017-12-17"},
  ]))
  data = loaders.load("steam", tmp_path)
  assert data.titles == ["Lost Summoner Kitty", "Free Thing", "Only A Title"]
  assert data.brands == ["Kotoshiro", "Secret Level", None]
  assert data.prices == [4.99, 0.0, None]
  assert data.categories[2] == ["RPG"]
  assert log_of(data) == [("Chaos Syren", "643980", 1513468800.0, None),
                          ("Chaos Syren", "761140", 1514851200.0, None),
                          ("Other", "5", 1513468800.0, None)]


# ---- Last.fm ---------------------------------------------------------------
def lastfm(tmp_path, tags=True):
  # UTF-8 with one Latin-1 line, as in the real file.
  write(tmp_path / "artists.dat", b"id\tname\turl\tpictureURL\n"
        b"1\tMALICE MIZER\thttp://a\thttp://p\n2\tDiary of Dreams\thttp://b\t\n"
        b"3\tCaf\xe9 Tacuba\thttp://c\thttp://p\n" +
        "4\tBj\u00f6rk\thttp://d\t\n".encode("utf-8"))
  write(tmp_path / "user_artists.dat", "userID\tartistID\tweight\n"
        "2\t1\t100\n2\t2\t300\n2\t3\t50\n2\t4\t300\n7\t4\t10\n")
  if tags:
    write(tmp_path / "user_taggedartists-timestamps.dat",
          "userID\tartistID\ttagID\ttimestamp\n"
          "2\t3\t13\t1238536800000\n2\t3\t15\t1230000000000\n"
          "2\t1\t13\t1240000000000\n")
  return tmp_path


def test_lastfm_first_tag_time_and_untagged_after(tmp_path):
  data = loaders.load("lastfm", lastfm(tmp_path))
  assert data.titles == ["MALICE MIZER", "Diary of Dreams", "Caf\u00e9 Tacuba",
                         "Bj\u00f6rk"]
  # Tagged pairs at their first tag time; untagged after the user's last tag,
  # most played first, ties in file order; user 7 never tagged: from 0.
  assert sorted(log_of(data), key=lambda r: (r[0], r[2])) == [
      ("2", "3", 1230000000.0, 50.0), ("2", "1", 1240000000.0, 100.0),
      ("2", "2", 1240000001.0, 300.0), ("2", "4", 1240000002.0, 300.0),
      ("7", "4", 1.0, 10.0)]


def test_lastfm_untagged_drop(tmp_path):
  data = loaders.load("lastfm", lastfm(tmp_path), untagged="drop")
  assert data.num_interactions == 2
  assert data.skipped["no_timestamp"] == 3


def llara(tmp_path, prefixes=False):
  write(tmp_path / "id2name.txt", "0::Morcheeba\n1::Enigma\n2::Caf\u00e9 Del Mar"
        "\n3::Four\n")
  write(tmp_path / "train.jsonl", jsonl([
      {"seq": [], "len_seq": 1, "next": 0}, {"seq": [0], "len_seq": 1, "next": 1},
      {"seq": [0, 1], "len_seq": 2, "next": 2},
      {"seq": [], "len_seq": 1, "next": 3}, {"seq": [3], "len_seq": 1, "next": 0}]))
  write(tmp_path / "valid.jsonl", jsonl([{"seq": [1, 2], "len_seq": 2,
                                          "next": 3}]))
  write(tmp_path / "test.jsonl", jsonl([{"seq": [2], "len_seq": 1, "next": 0}]))
  if prefixes:
    write(tmp_path / "valid_all_prefixes_NAPO.jsonl", jsonl([
        {"seq": [], "len_seq": 1, "next": 1}, {"seq": [1], "len_seq": 1, "next": 2},
        {"seq": [1, 2], "len_seq": 2, "next": 3}]))
  return tmp_path


def test_lastfm_llara_window_files(tmp_path):
  data = loaders.load("lastfm_llara", llara(tmp_path))
  assert data.titles[2] == "Caf\u00e9 Del Mar"
  assert log_of(data) == [
      ("train_0", "0", 0.0, None), ("train_0", "1", 1.0, None),
      ("train_0", "2", 2.0, None), ("train_1", "3", 0.0, None),
      ("train_1", "0", 1.0, None), ("valid_0", "1", 0.0, None),
      ("valid_0", "2", 1.0, None), ("valid_0", "3", 2.0, None),
      ("test_0", "2", 0.0, None), ("test_0", "0", 1.0, None)]


def test_lastfm_llara_prefers_all_prefix_files(tmp_path):
  data = loaders.load("lastfm_llara", llara(tmp_path, prefixes=True))
  valid = [r for r in log_of(data) if r[0].startswith("valid")]
  assert [r[1] for r in valid] == ["1", "2", "3"]
  assert data.num_users == 4


# ---- RecBole ---------------------------------------------------------------
def test_recbole(tmp_path):
  d = tmp_path / "tiny"
  d.mkdir()
  write(d / "tiny.inter", "user_id:token\titem_id:token\trating:float\t"
        "timestamp:float\n196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n")
  write(d / "tiny.item", "item_id:token\tmovie_title:token_seq\t"
        "release_year:token\tclass:token_seq\n242\tKolya\t1996\tComedy\n"
        "302\tL.A. Confidential\t1997\tCrime Film-Noir Mystery Thriller\n")
  data = loaders.load("recbole", d)
  assert data.name == "tiny"
  assert data.titles == ["Kolya (1996)", "L.A. Confidential (1997)"]
  assert data.categories[1] == ["Crime", "Film-Noir", "Mystery", "Thriller"]
  assert log_of(data) == [("196", "242", 881250949.0, 3.0),
                          ("186", "302", 891717742.0, 3.5)]
  plain = loaders.load("recbole", d / "tiny.inter", year_in_title=False)
  assert plain.titles[0] == "Kolya"


def test_recbole_without_item_file_uses_ids_and_file_order(tmp_path):
  write(tmp_path / "x.inter", "user_id:token\titem_id:token\nu\ta\nu\tb\n")
  data = loaders.load("recbole", tmp_path / "x.inter")
  assert data.titles == ["a", "b"]
  np.testing.assert_array_equal(data.timestamps, [2.0, 3.0])


# ---- generic CSV / JSON lines ----------------------------------------------
def test_csv_with_mapping_item_file_and_iso_dates(tmp_path):
  write(tmp_path / "log.csv", "uid,iid,ts,stars\nu1,i2,2020-01-02,4\n"
        "u1,i1,2020-01-01T12:00:00,5\nu2,i1,1577836800,\n")
  write(tmp_path / "items.csv", 'id,name,genres,maker,price\n'
        'i1,"Blue Pen, fine",Office|Pens,Inky,1.5\ni2,Red Pen,Office,,\n')
  data = loaders.load(
      "csv", tmp_path / "log.csv", columns="user=uid,item=iid,time=ts,rating=stars",
      items=str(tmp_path / "items.csv"),
      item_columns="item=id,title=name,categories=genres,brand=maker")
  assert data.item(0) == {"id": "i1", "title": "Blue Pen, fine",
                          "categories": ["Office", "Pens"], "brand": "Inky",
                          "description": None, "price": 1.5}
  assert log_of(data) == [("u1", "i2", 1577923200.0, 4.0),
                          ("u1", "i1", 1577880000.0, 5.0),
                          ("u2", "i1", 1577836800.0, None)]


def test_jsonl_defaults_and_implicit_catalogue(tmp_path):
  write(tmp_path / "log.jsonl.gz", jsonl([
      {"user_id": 1, "item_id": "a", "timestamp": 10, "rating": 2},
      {"user_id": 1, "item_id": "b", "timestamp": "1970-01-01"}]))
  data = loaders.load("jsonl", tmp_path / "log.jsonl.gz")
  assert data.titles == ["a", "b"]
  assert log_of(data) == [("1", "a", 10.0, 2.0), ("1", "b", 0.0, None)]


def test_jsonl_item_file(tmp_path):
  write(tmp_path / "log.jsonl", jsonl([{"user": "u", "item": "a", "time": 1}]))
  write(tmp_path / "items.jsonl", jsonl([
      {"id": "a", "title": "Apple", "categories": ["Fruit"], "price": "$2"}]))
  data = loaders.load("jsonl", tmp_path / "log.jsonl",
                      items=str(tmp_path / "items.jsonl"))
  assert data.item(0)["categories"] == ["Fruit"]
  assert data.prices == [2.0]


def test_csv_mapped_column_must_exist(tmp_path):
  write(tmp_path / "log.csv", "a,b,c\n1,2,3\n")
  with pytest.raises(DataError, match=r"log.csv:1: field 'uid'"):
    loaders.load("csv", tmp_path / "log.csv", columns="user=uid,item=b,time=c")
  with pytest.raises(DataError, match=r"field 'user': no user column"):
    loaders.load("csv", tmp_path / "log.csv")
  data = loaders.load("csv", tmp_path / "log.csv", columns="user=a,item=b,time=")
  assert data.timestamps.tolist() == [2.0]


# ---- registry --------------------------------------------------------------
def test_unknown_source_lists_known_ones():
  with pytest.raises(ValueError, match="unknown data source 'netflix'.*"
                     "amazon2014.*movielens.*synthetic"):
    loaders.load("netflix", "/nowhere")


def test_unknown_option_is_a_clear_error(tmp_path):
  with pytest.raises(TypeError, match="movielens"):
    loaders.load("movielens", ml100k(tmp_path), colour="blue")
  with pytest.raises(ValueError, match="on_error"):
    loaders.load("movielens", tmp_path, on_error="ignore")


# ---- the fast path for clean delimited logs ----------------------------------
def test_fast_and_line_by_line_paths_agree(tmp_path):
  clean = "10\t1\t5\t881250949\n11\t3\t4\t881250000\n10\t2\t3\t881250950\n"
  raw = clean.encode()
  assert _io.split_clean(raw, "\t", 4) == [
      ["10", "11", "10"], ["1", "3", "2"], ["5", "4", "3"],
      ["881250949", "881250000", "881250950"]]
  for ragged in ("1\t2\t3\n", "1\t2\t3\t4\t5\n", "\n", " 1\t2\t3\t4\n",
                 "1\t2\t3\t4\r\n"):
    assert _io.split_clean(raw + ragged.encode() + raw, "\t", 4) is None
  # Chunked reading splits at line ends and numbers lines across chunks.
  path = write(tmp_path / "c.tsv", clean * 3)
  chunks = list(_io.fast_chunks(path, "\t", 4, chunk_bytes=40))
  assert [line for line, _ in chunks] == [1, 4, 7]  # 3 whole lines each
  assert sum(len(c[0]) for _, c in chunks) == 9
  # A dirty last chunk rolls back what the clean chunks added.
  b = DatasetBuilder("t", implicit_items=True)
  b.add_interaction("u0", "i0", 0)
  dirty = write(tmp_path / "d.tsv", clean * 3 + "1\t2\t3\n")
  assert not _io.add_fast(b, dirty, "\t", 4, 0, 1, 3, 2, header=False,
                          chunk_bytes=40)
  assert b.num_interactions == 1 and b.referenced_item_ids() == ["i0"]
  assert _io.add_fast(b, path, "\t", 4, 0, 1, 3, 2, header=False,
                      chunk_bytes=40)
  data = b.build()
  assert data.user_ids == ["u0", "10", "11"] and data.num_interactions == 10
  (tmp_path / "a").mkdir()
  (tmp_path / "b").mkdir()
  fast = loaders.load("movielens", ml100k(tmp_path / "a", u_data=clean))
  # A stray space sends the file down the line-by-line path.
  slow = loaders.load("movielens", ml100k(
      tmp_path / "b", u_data=clean.replace("\t881250000", "\t 881250000")))
  assert log_of(fast) == log_of(slow)
  assert fast.user_ids == slow.user_ids == ["10", "11"]
