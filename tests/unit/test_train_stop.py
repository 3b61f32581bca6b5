from trainer.offline import stopped_at_epoch_cap


def test_the_epoch_cap_is_reported_only_when_it_cut_a_still_improving_run():
    curve = [{"epoch": e} for e in range(1, 41)]
    assert stopped_at_epoch_cap(curve, best_epoch=40, max_epochs=40, patience=5)
    assert stopped_at_epoch_cap(curve, best_epoch=36, max_epochs=40, patience=5)  # 4 bad epochs: not yet stopped
    assert not stopped_at_epoch_cap(curve, best_epoch=35, max_epochs=40, patience=5)  # patience would stop here too
    assert not stopped_at_epoch_cap(curve[:20], best_epoch=15, max_epochs=40, patience=5)  # early stopping ended it
