"""Which functions a statement may call.

Deny by default: a function runs only when its name (after the parser has resolved
quoting and U& escapes, with any `pg_catalog.` prefix removed) is on `SAFE`. The
`FORBIDDEN` names and prefixes are not needed for safety (they are not on `SAFE`);
they give the agent a precise reason and make the call `forbidden` in any tool.
"""

from __future__ import annotations


def _words(text: str) -> list[str]:
    return text.split()


SAFE = frozenset(_words("""
count sum avg min max bool_and bool_or every array_agg string_agg json_agg jsonb_agg json_object_agg
jsonb_object_agg stddev stddev_pop stddev_samp variance var_pop var_samp percentile_cont percentile_disc
mode rank dense_rank row_number ntile lag lead first_value last_value nth_value percent_rank cume_dist corr
covar_pop covar_samp regr_avgx regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy
regr_syy bit_and bit_or bit_xor any_value range_agg range_intersect_agg xmlagg
lower upper initcap length char_length character_length octet_length bit_length substr substring position
strpos left right lpad rpad ltrim rtrim btrim trim replace translate concat concat_ws format repeat reverse
split_part starts_with regexp_replace regexp_match regexp_matches regexp_split_to_array regexp_split_to_table
regexp_like regexp_count regexp_substr regexp_instr md5 sha224 sha256 sha384 sha512 encode decode to_hex
ascii chr quote_ident quote_literal quote_nullable string_to_array string_to_table array_to_string unistr
overlay normalize is_normalized to_ascii like_escape similar_escape similar_to_escape textcat textlen
abs ceil ceiling floor round trunc sign sqrt cbrt power pow exp ln log log10 mod div pi degrees radians
sin cos tan asin acos atan atan2 sind cosd tand asind acosd atand atan2d cot cotd sinh cosh tanh asinh
acosh atanh random random_normal width_bucket gcd lcm factorial scale min_scale
trim_scale erf erfc
now clock_timestamp statement_timestamp transaction_timestamp timeofday date_trunc date_part extract
date_bin age make_date make_time make_timestamp make_timestamptz make_interval to_char to_date to_timestamp
to_number justify_days justify_hours justify_interval isfinite timezone overlaps
json_build_object jsonb_build_object json_build_array jsonb_build_array json_object jsonb_object to_json
to_jsonb row_to_json array_to_json json_array_length jsonb_array_length json_each jsonb_each json_each_text
jsonb_each_text json_extract_path jsonb_extract_path json_extract_path_text jsonb_extract_path_text
json_object_keys jsonb_object_keys json_array_elements jsonb_array_elements json_array_elements_text
jsonb_array_elements_text jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty jsonb_strip_nulls
json_strip_nulls json_typeof jsonb_typeof jsonb_path_query jsonb_path_exists jsonb_path_match
jsonb_path_query_array jsonb_path_query_first json_populate_record jsonb_populate_record
json_populate_recordset jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset
jsonb_to_recordset jsonb_concat jsonb_contains jsonb_exists
array_length array_lower array_upper array_dims array_ndims cardinality array_append array_prepend array_cat
array_position array_positions array_remove array_replace array_fill array_sample array_shuffle trim_array
unnest generate_series generate_subscripts
version current_database current_schema current_schemas current_setting pg_typeof format_type
pg_get_viewdef pg_get_indexdef pg_get_constraintdef pg_get_expr pg_get_triggerdef pg_get_functiondef
pg_get_function_arguments pg_get_function_result pg_get_userbyid pg_get_serial_sequence pg_table_size
pg_relation_size pg_total_relation_size pg_indexes_size pg_size_pretty pg_size_bytes pg_database_size
pg_column_size obj_description col_description shobj_description has_table_privilege
has_column_privilege has_any_column_privilege has_schema_privilege has_database_privilege
has_sequence_privilege has_function_privilege pg_has_role to_regclass to_regtype to_regproc
to_regprocedure to_regnamespace to_regrole pg_table_is_visible pg_type_is_visible pg_function_is_visible
gen_random_uuid uuid_generate_v4 host hostmask masklen netmask network broadcast family abbrev set_masklen
inet_same_family inet_merge pg_backend_pid pg_postmaster_start_time pg_conf_load_time inet_client_addr
inet_client_port inet_server_addr inet_server_port num_nulls num_nonnulls
to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
ts_headline setweight strip numnode querytree tsvector_to_array array_to_tsvector
isempty lower_inc upper_inc lower_inf upper_inf range_merge multirange
date int2 int4 int8 int numeric float4 float8 text varchar bool timestamp timestamptz interval time
bpchar name oid
xmlparse xmlserialize xmlelement xmlforest xmlconcat xmlpi xmlroot xmlcomment xpath xpath_exists
xml_is_well_formed
"""))

# Reach outside the transaction, the database or the process, or outlive a rollback.
FORBIDDEN = frozenset(_words("""
pg_read_file pg_read_binary_file pg_stat_file pg_terminate_backend pg_cancel_backend pg_reload_conf
pg_rotate_logfile set_config pg_notify pg_switch_wal pg_promote pg_create_restore_point
pg_import_system_collations query_to_xml query_to_xml_and_xmlschema query_to_xmlschema cursor_to_xml
cursor_to_xmlschema table_to_xml table_to_xml_and_xmlschema table_to_xmlschema schema_to_xml
schema_to_xml_and_xmlschema schema_to_xmlschema database_to_xml database_to_xml_and_xmlschema
database_to_xmlschema pg_log_backend_memory_contexts pg_current_logfile pg_sleep pg_sleep_for pg_sleep_until
lo_import lo_export lo_unlink lo_create lo_creat lo_open lo_write lo_put lo_truncate loread lowrite
pg_file_write pg_file_rename pg_file_unlink pg_file_sync pg_logdir_ls txid_current pg_current_xact_id
"""))
FORBIDDEN_PREFIXES = (
    "pg_advisory", "pg_try_advisory", "dblink", "lo_", "pg_ls_", "pg_read_", "pg_stat_reset", "pg_replication_",
    "pg_logical_", "pg_create_physical_", "pg_create_logical_", "pg_drop_replication", "pg_copy_",
    "pg_wal_replay", "pg_backup_", "pg_start_backup", "pg_stop_backup", "pg_file_", "pg_sleep",
)
FORBIDDEN_SCHEMAS = frozenset({"cron", "dblink", "pg_cron", "plsh", "plpython3u", "adminpack"})

# Sequence changes are not rolled back: they outlive the transaction they ran in.
SEQUENCE = frozenset({"nextval", "setval", "currval", "lastval"})


def is_forbidden(name: str) -> bool:
    return name in FORBIDDEN or name.startswith(FORBIDDEN_PREFIXES)
