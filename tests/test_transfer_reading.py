"""The transfer table's reading is computed from its rows: better, within noise and worse all come out where the
numbers say so."""
from us3l.pipeline.transfer_reading import claim_summary, compare, reading_lines


def _row(method, width, mean, std, protocol="frozen"):
    return {"method": method, "protocol": protocol, "width": width, "seeds": [0, 1, 2],
            "box_AP_mean": mean, "box_AP_std": std, "mask_AP_mean": None, "mask_AP_std": None}


ROWS = [_row("us3l", 1.0, 20.0, 1.0), _row("random", 1.0, 10.0, 1.5),       # +10 > 3.0: better
        _row("simsiam_naive", 1.0, 19.0, 1.0),                             # +1 <= 2.0: within noise
        _row("us3l", 0.25, 5.0, 0.5), _row("random", 0.25, 9.0, 1.0),      # -4, |gap| > 2.0: worse
        _row("individual", 0.25, 5.0, None),                               # single-seed baseline with no std ...
        _row("us3l", 0.5, 7.0, None), _row("random", 0.5, 6.0, None),      # ... and no std at all: n/a
        _row("us3l", 1.0, 30.0, 2.0, "finetune"), _row("random", 1.0, 29.0, 2.0, "finetune")]


def test_verdicts_follow_the_numbers():
    got = {(e["protocol"], e["width"], e["baseline"]): (round(e["gap"], 6), e["verdict"]) for e in compare(ROWS)}
    assert got == {("frozen", 1.0, "random"): (10.0, "better"),
                   ("frozen", 1.0, "simsiam_naive"): (1.0, "within noise"),
                   ("frozen", 0.25, "random"): (-4.0, "worse"),
                   ("frozen", 0.25, "individual"): (0.0, "within noise"),
                   ("frozen", 0.5, "random"): (1.0, "n/a"),
                   ("finetune", 1.0, "random"): (1.0, "within noise")}


def test_reading_lines_and_claim_summary_name_the_misses():
    lines = reading_lines(ROWS)
    assert lines[0].startswith("frozen 1x, box AP: us3l vs random +10.0 (noise 3.0): better")
    assert any(line.startswith("frozen 0.25x") and "vs random -4.0 (noise 2.0): worse" in line for line in lines)
    assert lines[-1].startswith("finetune 1x")
    misses = claim_summary(ROWS)
    assert any("frozen 0.25x against random: -4.0 with noise 2.0 (worse)" in m for m in misses)
    assert not any("frozen 1x against random" in m for m in misses)
    assert claim_summary([_row("us3l", 1.0, 20.0, 1.0), _row("random", 1.0, 10.0, 1.0)]) == [
        "box AP: us3l is above every alternative by more than the noise at every width and protocol measured"]
