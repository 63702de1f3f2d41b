import json

import pytest

from indextts_fast.config import ModelFolder
from indextts_fast.emotion_text import ORDER, EmotionTextModel, parse_scores
from indextts_fast.errors import ModelFolderError, OptionError
from indextts_fast.pipeline import Emotion


def test_json_answer_in_vector_order():
    answer = json.dumps({"愤怒": 0.5, "高兴": 0.25, "惊讶": 0.1})
    assert parse_scores(answer, "今天真开心") == [0.25, 0.5, 0, 0, 0, 0, 0.1, 0]


def test_loose_answer_is_parsed_and_clamped():
    assert parse_scores('{"高兴": 3.0, "恐惧": 0.4, broken', "x") == [1.2, 0, 0, 0.4, 0, 0, 0, 0]


def test_melancholy_words_swap_sad_and_melancholic():
    answer = json.dumps({"悲伤": 0.8, "低落": 0.1})
    sad, mel = ORDER.index("悲伤"), ORDER.index("低落")
    w = parse_scores(answer, "I feel so Gloomy today")
    assert (w[sad], w[mel]) == (0.1, 0.8)
    assert parse_scores(answer, "a plain sentence")[sad] == 0.8


def test_no_emotion_means_calm():
    assert parse_scores("nothing useful", "x") == [0, 0, 0, 0, 0, 0, 0, 1.0]
    assert parse_scores(json.dumps({"高兴": -1}), "x")[ORDER.index("自然")] == 1.0


def test_folder_without_the_classifier_gives_a_clear_error(tiny_dir):
    with pytest.raises(ModelFolderError, match="emotion from text needs the emotion classifier"):
        EmotionTextModel.from_folder(ModelFolder(tiny_dir))


def test_emotion_options_are_exclusive():
    with pytest.raises(OptionError, match="one of"):
        Emotion(vector=[0] * 8, from_text=True)
    with pytest.raises(OptionError, match="only used with from_text"):
        Emotion(text="angry!")
    assert Emotion(from_text=True, text="angry!").text == "angry!"
