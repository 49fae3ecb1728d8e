"""The hard-negative difficulty probe: caption structure, truth, pairs, scorers."""

import json
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from cccl_lite.engine.baselines import difficulty_report
from cccl_lite.data.difficulty import hard_negative_pairs, pairwise_accuracy, structure_holds
from cccl_lite.data.grammar import caption_structure
from cccl_lite.data.synthetic import make_synthetic

ROOT = Path(__file__).resolve().parent.parent


def phrases(s):
    return [(p.shape, p.colour, p.size) for p in s.phrases]


@pytest.mark.parametrize("text,heads,expected_phrases,expected_relations", [
    ("a small red circle", [4, 4, 4, 0], [("circle", "red", "small")], []),
    ("a red circle and a blue square", [3, 3, 0, 7, 7, 7, 3],
     [("circle", "red", None), ("square", "blue", None)], []),
    ("a red circle left of a blue square", [3, 3, 0, 3, 8, 8, 8, 4],
     [("circle", "red", None), ("square", "blue", None)], [("left", 0, 1)]),
    ("a red circle above a blue square", [3, 3, 0, 7, 7, 7, 3],
     [("circle", "red", None), ("square", "blue", None)], [("above", 0, 1)]),
    ("the red circle is left of the blue square", [3, 3, 5, 5, 0, 9, 9, 9, 5],
     [("circle", "red", None), ("square", "blue", None)], [("left", 0, 1)]),
    ("the red circle is above the blue square", [3, 3, 8, 8, 8, 8, 8, 0],
     [("circle", "red", None), ("square", "blue", None)], [("above", 0, 1)]),
    ("there is a red circle above a green triangle", [2, 0, 5, 5, 2, 9, 9, 9, 5],
     [("circle", "red", None), ("triangle", "green", None)], [("above", 0, 1)]),
    ("two crosses and a large shape", [2, 0, 6, 6, 6, 2],
     [("cross", None, None), ("", None, "large")], []),
])
def test_structure_read_off_the_heads(text, heads, expected_phrases, expected_relations):
    s = caption_structure(text.split(), heads)
    assert phrases(s) == expected_phrases
    assert s.relations == expected_relations


def test_binding_follows_the_tree_not_the_word_order():
    # Same words, crossed tree: "red" attaches to "square", "blue" to "circle".
    s = caption_structure("a red circle and a blue square".split(), [3, 7, 0, 7, 7, 3, 3])
    assert phrases(s) == [("circle", "blue", None), ("square", "red", None)]


SCENE = [dict(shape="circle", colour="red", size="small", box=[0, 0, 10, 10]),
         dict(shape="square", colour="blue", size="large", box=[40, 0, 60, 20])]


def test_structure_holds_on_a_hand_made_scene():
    s = caption_structure("a red circle left of a blue square".split(), [3, 3, 0, 3, 8, 8, 8, 4])
    assert structure_holds(s, SCENE)
    swapped = [dict(SCENE[0], box=SCENE[1]["box"]), dict(SCENE[1], box=SCENE[0]["box"])]
    assert not structure_holds(s, swapped)
    rebound = [dict(SCENE[0], colour="blue"), dict(SCENE[1], colour="red")]
    assert not structure_holds(s, rebound)
    bag = caption_structure("a red circle and a blue square".split(), [3, 3, 0, 7, 7, 7, 3])
    assert structure_holds(bag, SCENE) and not structure_holds(bag, rebound)


def test_pairwise_accuracy_counts_ties_half():
    assert pairwise_accuracy(np.array([2.0, 1.0, 1.0, 0.0]), np.array([1.0, 1.0, 3.0, 0.0])) == 50.0


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_synthetic(tmp_path_factory.mktemp("d") / "tiny.h5", seed=1, size="tiny")


def test_hard_negative_pairs_are_siblings_and_false(tiny):
    pairs = hard_negative_pairs(tiny, "test")
    with h5py.File(tiny) as f:
        g = f["test"]
        group, variant = g["images/group"][:], g["images/variant"].asstr()[:]
        cap_image = g["captions/image"][:]
        scenes = [json.loads(s) for s in g["images/scene"].asstr()[:]]
        colours = [{(o["shape"], o["colour"]) for o in sc} for sc in scenes]
    assert pairs["binding"] and pairs["relation"] and pairs["random"]
    for kind in ("binding", "relation"):
        for k, j in pairs[kind]:
            i = cap_image[k]
            assert group[i] == group[j] and i != j
            assert sorted([variant[i], variant[j]]) == sorted(["base", kind])
            if kind == "binding":  # rebound images differ in their (shape, colour) pairs
                assert colours[i] != colours[j]
            else:  # swapped images keep them
                assert colours[i] == colours[j]
    assert all(group[cap_image[k]] != group[j] for k, j in pairs["random"])


def test_bag_of_words_is_near_chance_where_structure_is_not(tiny):
    r = difficulty_report(tiny, "test", bow_epochs=3)
    # Chance is 50 %; a bag of words cannot separate rebound captions, and the
    # structure-aware scorer (syntax + boxes) should.
    assert r["structure_probe"]["binding"] > r["bag_of_words"]["binding"] + 20
    assert r["structure_probe"]["relation"] > r["bag_of_words"]["relation"] + 20


@pytest.mark.slow  # trains both baselines in a command-line process
def test_cli_reports_and_fails_cleanly(tiny, tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "data_scripts/difficulty.py"), "--data",
                          str(tiny), "--bow-epochs", "1"], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert set(json.loads(run.stdout.strip().splitlines()[-1])) == {
        "pairs", "bag_of_words", "structure_probe", "bag_of_words_recall"}
    bad = subprocess.run([sys.executable, str(ROOT / "data_scripts/difficulty.py"), "--data",
                          str(tmp_path / "nope.h5")], capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "nope.h5" in bad.stderr
