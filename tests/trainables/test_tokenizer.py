"""The offline CLIP tokenizer (trainables/tokenizer.py) gives OpenAI CLIP's ids."""


def test_clip_tokenizer_matches_openai_ids():
    from trainables.tokenizer import clip_tokenizer

    tok = clip_tokenizer()
    assert tok("a photo of a", add_special_tokens=False).input_ids == [320, 1125, 539, 320]
    ids = tok(["polyp."]).input_ids[0]
    assert ids[0] == 49406 and ids[-1] == 49407  # SOS ... EOS
