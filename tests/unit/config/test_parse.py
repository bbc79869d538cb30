"""Unit tests for tuning/config/parse.py: CLI flags and JSON jobs -> typed values.

Why: fms jobs reach tuneforge as command lines and base64/JSON-file configs; each value must get
the type fms gives it, and every mistake must be reported (all at once, with a fix) instead of
being silently dropped as fms does.
"""

from __future__ import annotations

import base64
import json
import re

import pytest

from tuning.config.parse import (
    JSON_ENV_VAR,
    JSON_PATH_VAR,
    collect_values,
    convert_value,
    decode_escapes,
    parse_cli,
    parse_json_object,
    read_json_job,
)
from tuning.config.schema import all_flags
from tuning.errors import ConfigError, UserError


def b64(obj: object) -> str:
    return base64.b64encode(json.dumps(obj).encode()).decode()


def problem_count(message: str) -> int:
    return len(re.findall(r"\(\d+\) ", message))


# --- booleans -------------------------------------------------------------------------------


def test_bare_boolean_flag_means_true():
    assert parse_cli(["--packing"]) == {"packing": True}


def test_bare_boolean_followed_by_another_flag():
    assert parse_cli(["--packing", "--max_seq_length", "128"]) == {
        "packing": True,
        "max_seq_length": 128,
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("True", True),
        ("1", True),
        ("yes", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
    ],
)
def test_boolean_spellings(text, expected):
    assert parse_cli(["--use_flash_attn", text]) == {"use_flash_attn": expected}


def test_boolean_false_overrides_a_true_default():
    assert all_flags()["use_flash_attn"].default is True
    assert parse_cli(["--use_flash_attn", "false"])["use_flash_attn"] is False


def test_boolean_with_a_non_boolean_value_is_an_error():
    with pytest.raises(ConfigError, match=r"'packing' got 'maybe': expected true or false"):
        parse_cli(["--packing", "maybe"])


def test_boolean_with_two_values_is_an_error():
    with pytest.raises(ConfigError, match="expected one value, got 2"):
        parse_cli(["--packing", "true", "false"])


def test_json_booleans_keep_their_type():
    assert parse_json_object({"packing": True, "use_flash_attn": False}, "job") == {
        "packing": True,
        "use_flash_attn": False,
    }


def test_json_boolean_for_a_text_flag_reads_like_the_cli():
    # resume_from_checkpoint is text ("true" / "false" / a path); JSON true must mean "true".
    assert parse_json_object({"resume_from_checkpoint": True}, "job") == {
        "resume_from_checkpoint": "true"
    }
    assert parse_cli(["--resume_from_checkpoint", "true"]) == {"resume_from_checkpoint": "true"}


# --- lists ----------------------------------------------------------------------------------


def test_list_space_separated():
    assert parse_cli(["--target_modules", "q_proj", "v_proj"]) == {
        "target_modules": ["q_proj", "v_proj"]
    }


def test_list_as_json_string():
    assert parse_cli(["--target_modules", '["q_proj", "k_proj"]']) == {
        "target_modules": ["q_proj", "k_proj"]
    }


def test_list_single_value_is_a_one_item_list():
    assert parse_cli(["--target_modules", "all-linear"]) == {"target_modules": ["all-linear"]}


def test_list_of_ints():
    assert parse_cli(["--layers_to_transform", "0", "3"]) == {"layers_to_transform": [0, 3]}
    assert parse_cli(["--layers_to_transform", "[1, 2]"]) == {"layers_to_transform": [1, 2]}


def test_list_of_ints_with_a_word_is_an_error():
    with pytest.raises(ConfigError, match="layers_to_transform"):
        parse_cli(["--layers_to_transform", "0", "last"])


def test_list_from_json_job_and_json_string_value():
    assert parse_json_object({"target_modules": ["q_proj"]}, "job") == {
        "target_modules": ["q_proj"]
    }
    assert parse_json_object({"target_modules": "q_proj"}, "job") == {"target_modules": ["q_proj"]}


def test_list_with_bad_json_is_an_error():
    with pytest.raises(ConfigError, match="target_modules"):
        parse_cli(["--target_modules", '["q_proj"'])


def test_list_flag_needs_a_value():
    with pytest.raises(ConfigError, match="--target_modules needs a value"):
        parse_cli(["--target_modules", "--packing"])


def test_none_inside_a_list_is_kept():
    # "none" is meaningful as a list item: no trackers / no report_to integrations.
    assert parse_cli(["--trackers", "none"]) == {"trackers": ["none"]}
    assert parse_cli(["--report_to", "none"]) == {"report_to": ["none"]}
    assert parse_json_object({"trackers": "none"}, "job") == {"trackers": ["none"]}


def test_fms_list_valued_plugin_flags():
    assert parse_cli(["--padding_free", "huggingface"]) == {"padding_free": ["huggingface"]}
    assert parse_json_object({"padding_free": ["huggingface"]}, "job") == {
        "padding_free": ["huggingface"]
    }
    assert parse_cli(["--padding_free", "true"]) == {"padding_free": ["huggingface"]}
    assert parse_cli(["--padding_free", "false"]) == {"padding_free": None}
    assert parse_cli(["--fast_moe", "1"]) == {"fast_moe": ["1"]}


def test_padding_free_unknown_value_is_an_error():
    with pytest.raises(ConfigError, match="expected 'huggingface' or true/false"):
        parse_cli(["--padding_free", "flash"])


# --- scalar forms ---------------------------------------------------------------------------


def test_name_equals_value():
    assert parse_cli(["--learning_rate=1e-4", "--packing=false"]) == {
        "learning_rate": 1e-4,
        "packing": False,
    }


def test_name_equals_value_keeps_later_equals_signs():
    assert parse_cli(["--run_name=a=b"]) == {"run_name": "a=b"}


def test_dashes_in_names_are_underscores():
    assert parse_cli(["--learning-rate", "0.5"]) == {"learning_rate": 0.5}


def test_int_float_and_str_conversion():
    assert parse_cli(
        ["--max_seq_length", "512", "--lora_dropout", "0.1", "--output_dir", "/out"]
    ) == {"max_seq_length": 512, "lora_dropout": 0.1, "output_dir": "/out"}


def test_negative_numbers_are_values_not_flags():
    assert parse_cli(["--max_steps", "-1", "--learning_rate", "-1e-3"]) == {
        "max_steps": -1,
        "learning_rate": -1e-3,
    }


def test_json_numbers_convert():
    assert parse_json_object({"max_seq_length": 512.0, "learning_rate": 1}, "job") == {
        "max_seq_length": 512,
        "learning_rate": 1.0,
    }


def test_bad_int_is_an_error():
    with pytest.raises(ConfigError, match=r"flag 'max_seq_length' got 'long'"):
        parse_cli(["--max_seq_length", "long"])


@pytest.mark.parametrize("value", [2.5, True, "2.5"])
def test_non_whole_number_for_an_int_is_an_error(value):
    with pytest.raises(ConfigError, match="max_seq_length"):
        parse_json_object({"max_seq_length": value}, "job")


def test_bad_float_is_an_error():
    with pytest.raises(ConfigError, match="learning_rate"):
        parse_cli(["--learning_rate", "fast"])


def test_text_flag_with_several_values_is_an_error():
    with pytest.raises(ConfigError, match="expected one value, got 2"):
        parse_cli(["--output_dir", "/a", "/b"])


def test_text_flag_given_an_object_in_json_is_an_error():
    with pytest.raises(ConfigError, match="expected a single text value"):
        parse_json_object({"output_dir": {"path": "/a"}}, "job")


def test_none_clears_an_optional_value():
    assert parse_cli(["--save_model_dir", "none"]) == {"save_model_dir": None}
    assert parse_cli(["--max_steps", "null"]) == {"max_steps": None}
    assert parse_json_object({"save_model_dir": None}, "job") == {"save_model_dir": None}


def test_last_of_repeated_flag_wins():
    assert parse_cli(["--learning_rate", "1", "--learning_rate", "2"]) == {"learning_rate": 2.0}


def test_empty_command_line():
    assert parse_cli([]) == {}


# --- json kind ------------------------------------------------------------------------------


def test_json_kind_from_cli():
    assert parse_cli(["--lr_scheduler_kwargs", '{"min_lr_rate": 0.1}']) == {
        "lr_scheduler_kwargs": {"min_lr_rate": 0.1}
    }


def test_json_kind_from_json_job_is_kept():
    value = {"use_reentrant": False}
    assert parse_json_object({"gradient_checkpointing_kwargs": value}, "job") == {
        "gradient_checkpointing_kwargs": value
    }


def test_json_kind_accepts_a_path():
    assert parse_cli(["--fsdp_config", "/configs/fsdp.json"]) == {
        "fsdp_config": "/configs/fsdp.json"
    }


def test_json_kind_with_broken_json_is_an_error():
    with pytest.raises(ConfigError, match="lr_scheduler_kwargs"):
        parse_cli(["--lr_scheduler_kwargs", '{"min_lr_rate": }'])


def test_launcher_keys_are_accepted():
    job = {"accelerate_launch_args": {"num_processes": 2}, "lora_post_process_for_vllm": True}
    assert parse_json_object(job, "job") == job


# --- choices --------------------------------------------------------------------------------


def test_choice_accepted():
    assert parse_cli(["--torch_dtype", "float16"]) == {"torch_dtype": "float16"}


def test_choice_is_case_insensitive_and_canonicalised():
    assert parse_cli(["--prompt_tuning_init", "random"]) == {"prompt_tuning_init": "RANDOM"}
    assert parse_cli(["--peft_method", "LoRA"]) == {"peft_method": "lora"}


def test_bad_choice_lists_the_choices():
    with pytest.raises(ConfigError, match="expected one of lora, pt, alora, none"):
        parse_cli(["--peft_method", "qlora"])


@pytest.mark.parametrize(
    ("flag", "text"),
    [("peft_method", "none"), ("quantization_method", "none"), ("bias", "none")],
)
def test_none_is_kept_where_it_is_a_choice(flag, text):
    assert parse_cli([f"--{flag}", text]) == {flag: "none"}
    assert parse_cli([f"--{flag}", "NONE"]) == {flag: "none"}
    assert parse_json_object({flag: text}, "job") == {flag: "none"}


def test_none_clears_an_optional_choice():
    assert parse_cli(["--flash_attn_implementation", "null"]) == {"flash_attn_implementation": None}


# --- escapes --------------------------------------------------------------------------------


def test_response_template_escapes_are_decoded():
    parsed = parse_cli(["--response_template", "\\n### Response:"])
    assert parsed == {"response_template": "\n### Response:"}


def test_every_template_flag_decodes_escapes():
    for name in (
        "response_template",
        "instruction_template",
        "data_formatter_template",
        "chat_template",
    ):
        assert parse_cli([f"--{name}", "a\\tb\\n"]) == {name: "a\tb\n"}, name


def test_json_template_with_real_newline_is_unchanged():
    assert parse_json_object({"response_template": "\n### Response:"}, "job") == {
        "response_template": "\n### Response:"
    }


def test_other_flags_keep_backslashes():
    assert parse_cli(["--output_dir", "C:\\new"]) == {"output_dir": "C:\\new"}


@pytest.mark.parametrize(
    ("raw", "decoded"),
    [
        ("plain", "plain"),
        ("\\n### Response:", "\n### Response:"),
        ("caf\u00e9\\n", "caf\u00e9\n"),
        ("\u2192 \u7b54\u3048\\t", "\u2192 \u7b54\u3048\t"),
        ("emoji \U0001f600\\n", "emoji \U0001f600\n"),
        ("broken \\x4", "broken \\x4"),
    ],
)
def test_decode_escapes(raw, decoded):
    assert decode_escapes(raw) == decoded


# --- aliases --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--data_config", "d.yaml"], {"data_config_path": "d.yaml"}),
        (["--tracker", "aim"], {"trackers": ["aim"]}),
        (["--lora_r", "4"], {"r": 4}),
    ],
)
def test_alias_sets_the_canonical_flag(argv, expected):
    assert parse_cli(argv) == expected


def test_alias_in_json_job():
    assert parse_json_object({"lora_r": 4, "tracker": ["mlflow"]}, "job") == {
        "r": 4,
        "trackers": ["mlflow"],
    }


def test_same_flag_via_alias_and_name_is_an_error():
    with pytest.raises(ConfigError, match=r"'r' and 'lora_r' both set r; keep one"):
        parse_cli(["--lora_r", "4", "--r", "8"])
    with pytest.raises(ConfigError, match="both set data_config_path"):
        parse_json_object({"data_config": "a.yaml", "data_config_path": "b.yaml"}, "job")


# --- unknown flags and keys -----------------------------------------------------------------


def test_unknown_flag_has_did_you_mean():
    with pytest.raises(
        ConfigError, match=r"unknown flag 'learnin_rate'\. Did you mean 'learning_rate'\?"
    ):
        parse_cli(["--learnin_rate", "1"])


def test_unknown_bare_flag_is_reported_as_unknown():
    with pytest.raises(ConfigError) as excinfo:
        parse_cli(["--use_flsh_attn"])
    message = str(excinfo.value)
    assert "unknown flag 'use_flsh_attn'. Did you mean 'use_flash_attn'?" in message
    assert "needs a value" not in message


def test_unknown_flag_without_a_close_match():
    with pytest.raises(ConfigError, match=r"unknown flag 'xyzzy'\. Run with --help"):
        parse_cli(["--xyzzy", "1"])


def test_unknown_json_key_has_did_you_mean():
    with pytest.raises(ConfigError, match=r"unknown key 'num_train_epoch'\. Did you mean"):
        parse_json_object({"num_train_epoch": 1}, "job")


def test_value_without_a_flag_is_an_error():
    with pytest.raises(ConfigError, match=r"unexpected value 'train\.jsonl'"):
        parse_cli(["train.jsonl", "--packing"])


def test_config_error_is_a_user_error():
    with pytest.raises(UserError):
        parse_cli(["--nope", "1"])


def test_every_problem_is_reported_in_one_message():
    with pytest.raises(ConfigError) as excinfo:
        parse_cli(
            [
                "stray",
                "--learnin_rate",
                "1",
                "--max_seq_length",
                "long",
                "--peft_method",
                "qlora",
                "--lora_r",
                "4",
                "--r",
                "8",
                "--output_dir",
            ]
        )
    message = str(excinfo.value)
    assert message.startswith("The command line has 6 problems: (1) ")
    assert problem_count(message) == 6
    for needle in ("stray", "learnin_rate", "max_seq_length", "qlora", "keep one", "output_dir"):
        assert needle in message


def test_every_json_problem_is_reported_in_one_message():
    with pytest.raises(ConfigError) as excinfo:
        parse_json_object({"packing": "sometimes", "lora_rr": 4, "torch_dtype": "fp8"}, "my job")
    message = str(excinfo.value)
    assert message.startswith("my job has 3 problems: (1) ")
    assert problem_count(message) == 3


def test_json_object_must_be_a_mapping():
    with pytest.raises(ConfigError, match=r"must hold one JSON object .* found list"):
        parse_json_object(["--packing"], "job")


# --- JSON job from the environment ----------------------------------------------------------


def test_no_json_job():
    assert read_json_job({}) is None
    assert read_json_job({JSON_ENV_VAR: "", JSON_PATH_VAR: ""}) is None


def test_json_job_from_base64_env_var():
    values, source = read_json_job({JSON_ENV_VAR: b64({"learning_rate": 0.1, "packing": True})})
    assert values == {"learning_rate": 0.1, "packing": True}
    assert JSON_ENV_VAR in source


def test_base64_wrapped_over_lines_is_accepted():
    # `base64 config.json` (without -w0) wraps its output every 76 characters.
    job = {"output_dir": "/out/" + "x" * 100, "learning_rate": 0.1}
    wrapped = base64.encodebytes(json.dumps(job).encode()).decode()
    assert "\n" in wrapped.strip()
    assert read_json_job({JSON_ENV_VAR: wrapped})[0] == job


@pytest.mark.parametrize("encoded", ["not base64!!", "eyJ", base64.b64encode(b"\xff\xfe").decode()])
def test_invalid_base64_is_a_config_error(encoded):
    with pytest.raises(ConfigError, match=f"{JSON_ENV_VAR}.*base64 -w0"):
        read_json_job({JSON_ENV_VAR: encoded})


def test_base64_of_invalid_json_is_a_config_error():
    encoded = base64.b64encode(b'{"learning_rate": }').decode()
    with pytest.raises(ConfigError, match="is not valid JSON"):
        read_json_job({JSON_ENV_VAR: encoded})


def test_json_job_from_path(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"max_seq_length": 256, "target_modules": ["q_proj"]}))
    values, source = read_json_job({JSON_PATH_VAR: str(path)})
    assert values == {"max_seq_length": 256, "target_modules": ["q_proj"]}
    assert str(path) in source


def test_missing_json_path_is_a_config_error(tmp_path):
    missing = tmp_path / "nope.json"
    with pytest.raises(ConfigError, match=r"nope\.json.*cannot be read: No such file"):
        read_json_job({JSON_PATH_VAR: str(missing)})


def test_json_path_that_is_a_folder_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="cannot be read"):
        read_json_job({JSON_PATH_VAR: str(tmp_path)})


def test_invalid_json_file_names_the_line(tmp_path):
    path = tmp_path / "job.json"
    path.write_text('{\n  "learning_rate": 0.1,\n  "packing": tru\n}\n')
    with pytest.raises(ConfigError, match=r"not valid JSON: .* \(line 3, column \d+\)"):
        read_json_job({JSON_PATH_VAR: str(path)})


def test_non_utf8_json_file_is_a_config_error(tmp_path):
    path = tmp_path / "job.json"
    path.write_bytes(b'{"output_dir": "\xff"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_json_job({JSON_PATH_VAR: str(path)})


@pytest.mark.parametrize("content", ["[1, 2]", '"text"', "3", "null"])
def test_json_file_that_is_not_an_object_is_a_config_error(tmp_path, content):
    path = tmp_path / "job.json"
    path.write_text(content)
    with pytest.raises(ConfigError, match="must hold one JSON object"):
        read_json_job({JSON_PATH_VAR: str(path)})


def test_json_file_with_unknown_key_names_the_file(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"learnin_rate": 1}))
    with pytest.raises(ConfigError, match=r"job\.json.*Did you mean 'learning_rate'"):
        read_json_job({JSON_PATH_VAR: str(path)})


def test_base64_wins_over_path(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"learning_rate": 0.5}))
    environ = {JSON_ENV_VAR: b64({"learning_rate": 0.1}), JSON_PATH_VAR: str(path)}
    assert read_json_job(environ)[0] == {"learning_rate": 0.1}


def test_base64_wins_even_over_a_missing_path(tmp_path):
    environ = {JSON_ENV_VAR: b64({"seed": 1}), JSON_PATH_VAR: str(tmp_path / "missing.json")}
    assert read_json_job(environ)[0] == {"seed": 1}


# --- JSON job + command line ----------------------------------------------------------------


def test_cli_overrides_json():
    environ = {JSON_ENV_VAR: b64({"learning_rate": 0.1, "packing": True, "seed": 7})}
    values = collect_values(["--learning_rate", "0.2", "--packing", "false"], environ)
    assert values == {"learning_rate": 0.2, "packing": False, "seed": 7}


def test_cli_alias_overrides_json_canonical_name():
    environ = {JSON_ENV_VAR: b64({"data_config_path": "a.yaml"})}
    assert collect_values(["--data_config", "b.yaml"], environ) == {"data_config_path": "b.yaml"}


def test_collect_values_without_json_job():
    assert collect_values(["--seed", "3"], {}) == {"seed": 3}


def test_collect_values_reads_os_environ_by_default(monkeypatch):
    monkeypatch.setenv(JSON_ENV_VAR, b64({"seed": 5}))
    monkeypatch.delenv(JSON_PATH_VAR, raising=False)
    assert collect_values([]) == {"seed": 5}


def test_collect_values_reports_json_errors_before_cli():
    environ = {JSON_ENV_VAR: b64({"nope": 1})}
    with pytest.raises(ConfigError, match=f"JSON config in \\${JSON_ENV_VAR}"):
        collect_values(["--seed", "1"], environ)


# --- convert_value directly -----------------------------------------------------------------


def test_convert_value_keeps_none():
    assert convert_value(all_flags()["learning_rate"], None) is None


def test_every_flag_accepts_its_own_default():
    # A default written back into a JSON job (e.g. a resolved config) must parse.
    for spec in all_flags().values():
        if spec.default is None:
            continue
        converted = convert_value(spec, spec.default)
        if spec.kind == "list" and not isinstance(spec.default, list):
            assert converted == [spec.default], spec.name
        else:
            assert converted == spec.default, spec.name
