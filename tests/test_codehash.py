from advprune.codehash import code_hash, source_files

from conftest import REPO


def _names(files):
    return {str(p.relative_to(REPO)) for p in files}


def test_a_stage_hashes_the_library_modules_it_imports_and_no_others():
    pretrain = _names(source_files(REPO / "scripts/pretrain.py"))
    assert {"scripts/pretrain.py", "advprune/training/trainer.py", "advprune/training/losses.py", "advprune/attacks/pgd.py", "advprune/models/resnet.py", "advprune/data/__init__.py"} <= pretrain
    assert not any(p.startswith("advprune/report") for p in pretrain)
    assert "advprune/attacks/autoattack.py" not in pretrain  # training never runs AutoAttack
    report = _names(source_files(REPO / "scripts/report.py"))
    assert any(p.startswith("advprune/report/figures") for p in report) and "advprune/training/trainer.py" not in report


def test_a_pruning_job_hashes_its_own_method_only():
    lwm = _names(source_files(REPO / "scripts/prune.py", ("advprune.pruning.lwm",)))
    assert "advprune/pruning/lwm.py" in lwm and "advprune/pruning/random.py" not in lwm
    assert code_hash(REPO / "scripts/prune.py", ("advprune.pruning.lwm",)) != code_hash(REPO / "scripts/prune.py", ("advprune.pruning.random",))


def test_the_hash_is_stable():
    assert code_hash(REPO / "scripts/evaluate.py") == code_hash(REPO / "scripts/evaluate.py")


def test_an_edited_file_is_read_again_within_one_process(tmp_path):
    """The hashes are cached per file version (a paper-scale DAG asks for thousands): an edit must still show."""
    script = tmp_path / "stage.py"

    def library_files():
        return _names(f for f in source_files(script) if f != script.resolve())

    script.write_text("import advprune.checkpoint\n")
    before, files_before = code_hash(script), library_files()
    script.write_text("import advprune.checkpoint\nimport advprune.report.style\n")
    assert code_hash(script) != before
    files_after = library_files()
    assert files_after > files_before and {"advprune/report/__init__.py", "advprune/report/style.py"} <= files_after
