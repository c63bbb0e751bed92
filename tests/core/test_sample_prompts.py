"""The sample prompt file: sd-scripts' syntax, refused line by line where sd-scripts would guess."""

import pytest

from anima_lora_flow.core.sample_prompts import (
    SamplePrompt,
    parse_sample_prompts,
    read_sample_prompts,
    to_sd_scripts_line,
)
from anima_lora_flow.errors import UserInputError


def test_options_are_read_as_sd_scripts_reads_them():
    text = "\ufeff# comment\n\n1girl, smile --w 832 --h 1216 --s 24 --d 7 --l 4.5 --n lowres, bad hands\nplain prompt\n"
    first, second = parse_sample_prompts(text, "p.txt")
    assert first == SamplePrompt("1girl, smile", negative_prompt="lowres, bad hands", width=832, height=1216,
                                 steps=24, seed=7, guidance=4.5)
    assert second == SamplePrompt("plain prompt")


def test_round_trip_through_the_sd_scripts_line():
    prompts = parse_sample_prompts("a cat --w 512 --h 768 --d 3 --l 7.5 --fs 3 --n ugly\n", "p.txt")
    assert parse_sample_prompts(to_sd_scripts_line(prompts[0]), "again") == prompts
    assert to_sd_scripts_line(prompts[0]) == "a cat --w 512 --h 768 --d 3 --l 7.5 --n ugly --fs 3"


@pytest.mark.parametrize(
    "line, reason",
    [
        ("a cat --x 3", "line 2: unknown option --x"),
        ("a cat --w big", "line 2: --w big"),
        ("a cat --w 10", "line 2: --w 10: 10 is outside 64..4096"),
        ("a cat --s 0", "line 2: --s 0"),
        ("a cat --l nan", "line 2: --l nan"),
        ("a cat --n", "line 2: --n needs a value"),
        ("--w 512", "line 2: the line has options but no prompt"),
    ],
)
def test_a_bad_line_is_refused_with_its_number(line, reason):
    with pytest.raises(UserInputError) as caught:
        parse_sample_prompts(f"fine prompt\n{line}\n", "prompts.txt")
    assert f"prompts.txt {reason}" in str(caught.value)
    assert caught.value.field == "sample_prompts"


def test_a_file_without_prompts_or_unreadable_is_refused(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("# only a comment\n\n")
    with pytest.raises(UserInputError, match="has no prompt"):
        read_sample_prompts(empty)
    with pytest.raises(UserInputError, match="cannot read it"):
        read_sample_prompts(tmp_path / "missing.txt")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserInputError, match="cannot read it"):
        read_sample_prompts(binary)
