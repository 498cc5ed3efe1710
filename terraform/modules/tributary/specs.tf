# The specs, as S3 objects or SSM parameters; an init container (s3) or the
# task's secrets (ssm) put them under /etc/tributary/specs before Tributary starts.
locals {
  spec_prefix = "_tributary/${var.name}/specs"
  ssm_prefix  = "/tributary/${var.name}/specs"
}

resource "aws_s3_object" "spec" {
  for_each = var.spec_store == "s3" ? var.specs : {}

  bucket       = aws_s3_bucket.lake.id
  key          = "${local.spec_prefix}/${each.key}.yaml"
  content      = each.value
  content_type = "application/yaml"
  kms_key_id   = aws_kms_key.lake.arn
  tags         = var.tags
}

resource "aws_ssm_parameter" "spec" {
  for_each = var.spec_store == "ssm" ? var.specs : {}

  name   = "${local.ssm_prefix}/${each.key}"
  type   = "SecureString"
  tier   = length(each.value) > 4096 ? "Advanced" : "Standard"
  value  = each.value
  key_id = aws_kms_key.lake.arn
  tags   = var.tags
}

# --- Pipeline sets ------------------------------------------------------------
#
# A pipeline set is the specs that one task runs under one task role. With
# isolate_roles = false there is one set, `all`: every spec in one service,
# as before. With isolate_roles = true every spec is a set of its own, with
# its own role, task definition and service, keyed by the spec's name.
locals {
  pipeline_sets = var.isolate_roles ? tomap({ for k in keys(var.specs) : k => tolist([k]) }) : tomap({ all = sort(keys(var.specs)) })
}

# What each spec touches, read from its YAML as Tributary will expand it:
# its table, its dead-letter table (`<table.uri>_dead_letters` unless
# dead_letters.table says otherwise), its late_rows table if it has one, and
# its checkpoint location. The table comes first. ${TRIBUTARY_LAKE} and
# ${TRIBUTARY_CHECKPOINTS} are expanded to what the container sees; other
# references are not.
locals {
  lake_uri       = "s3://${var.lake_bucket_name}/${var.lake_prefix}"
  checkpoint_uri = "s3://${var.lake_bucket_name}/${var.checkpoint_prefix}"
  bucket_uri     = "s3://${var.lake_bucket_name}/"

  # `${NAME}` or `${NAME:-default}` at the start of a location.
  lake_reference       = "/^\\$\\{TRIBUTARY_LAKE(:-[^}]*)?\\}/"
  checkpoint_reference = "/^\\$\\{TRIBUTARY_CHECKPOINTS(:-[^}]*)?\\}/"

  spec_documents = { for k, text in var.specs : k => try(yamldecode(text), {}) }

  # "" where a spec has no such location (or a null one).
  spec_raw_locations = {
    for k, doc in local.spec_documents : k => [
      for u in concat(
        [try(tostring(doc.table.uri), "")],
        [try(tostring(doc.dead_letters.table), "${tostring(doc.table.uri)}_dead_letters", "")],
        [for t in [try(tostring(doc.late_rows), "drop")] : t if t != "drop"],
        [try(tostring(doc.checkpoint.location), "")],
      ) : u == null ? "" : u
    ]
  }

  spec_locations = {
    for k, raw in local.spec_raw_locations : k => [
      for u in raw : trimsuffix(replace(replace(u,
        local.lake_reference, lookup(var.environment, "TRIBUTARY_LAKE", local.lake_uri)),
        local.checkpoint_reference, lookup(var.environment, "TRIBUTARY_CHECKPOINTS", local.checkpoint_uri),
      ), "/")
    ]
  }

  # The keys an isolated role may use: locations under lake_prefix or
  # checkpoint_prefix, in characters that are no IAM wildcard.
  spec_keys = {
    for k, locations in local.spec_locations : k => distinct([
      for u in locations : trimprefix(u, local.bucket_uri)
      if (startswith(u, "${local.lake_uri}/") || startswith(u, "${local.checkpoint_uri}/"))
      && can(regex("^[A-Za-z0-9_.=/-]+$", trimprefix(u, local.bucket_uri)))
    ])
  }

  # Why a spec cannot be isolated: its table is not in the lake, or one of
  # its locations is on S3 (or still holds a ${...} reference, so may be)
  # without being one of those keys. See the precondition on
  # aws_iam_role_policy.task.
  spec_misplaced = {
    for k, locations in local.spec_locations : k => concat(
      startswith(locations[0], "${local.lake_uri}/") ? [] : ["table.uri '${locations[0]}' is not under ${local.lake_uri}/"],
      [
        for u in slice(locations, 1, length(locations)) : "'${u}' is not under ${local.lake_uri}/ or ${local.checkpoint_uri}/ in letters, digits and _ . = / -"
        if (startswith(u, "s3://") || strcontains(u, "$")) && !contains([for key in local.spec_keys[k] : "${local.bucket_uri}${key}"], u)
      ],
    )
  }

  # Whether `tributary run` deletes expired Delta log files of the spec's
  # tables. Its compaction worker does on every pass (compaction.log_retention,
  # at least 7 days), and it runs unless `compaction.enabled: false` or
  # `trigger.available_now: true` (crates/service/src/main.rs). Anything but
  # those literal values (a ${VAR}, say) counts as cleaning.
  spec_cleans_delta_log = {
    for k, doc in local.spec_documents : k => !(try(doc.compaction.enabled, true) == false || try(doc.trigger.available_now, false) == true)
  }
}
