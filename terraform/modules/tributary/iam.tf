data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# Execution role: what ECS itself needs to start the task (pull the image,
# write logs, read the secrets and spec parameters it injects).
resource "aws_iam_role" "execution" {
  name_prefix        = "tributary-${var.name}-exec-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.tags
}

locals {
  secret_arns = compact([var.kafka_sasl_scram_secret_arn, var.schema_registry_credentials_secret_arn])
}

data "aws_iam_policy_document" "execution" {
  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.tributary.arn}:*"]
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [var.image_repository_arn]
    content {
      sid       = "PullImage"
      actions   = ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.image_repository_arn == null ? [] : [1]
    content {
      sid = "EcrLogin"
      # GetAuthorizationToken has no resource-level permissions.
      actions   = ["ecr:GetAuthorizationToken"]
      resources = ["*"]
    }
  }

  dynamic "statement" {
    for_each = length(local.secret_arns) == 0 ? [] : [1]
    content {
      sid       = "ReadConnectionSecrets"
      actions   = ["secretsmanager:GetSecretValue"]
      resources = local.secret_arns
    }
  }

  dynamic "statement" {
    for_each = length(var.secrets_kms_key_arns) == 0 ? [] : [1]
    content {
      sid       = "DecryptConnectionSecrets"
      actions   = ["kms:Decrypt"]
      resources = var.secrets_kms_key_arns
    }
  }

  dynamic "statement" {
    for_each = var.spec_store == "ssm" ? [1] : []
    content {
      sid       = "ReadSpecParameters"
      actions   = ["ssm:GetParameters"]
      resources = [for p in aws_ssm_parameter.spec : p.arn]
    }
  }

  dynamic "statement" {
    for_each = var.spec_store == "ssm" ? [1] : []
    content {
      sid       = "DecryptSpecParameters"
      actions   = ["kms:Decrypt"]
      resources = [aws_kms_key.lake.arn]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  name   = "start-task"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution.json
}

# Task roles: what Tributary does at run time. One per pipeline set (one in
# all unless isolate_roles; see specs.tf). Read and write the set's tables and
# checkpoints, read its own specs, use the lake key. Nothing else.
locals {
  task_access = {
    for set, members in local.pipeline_sets : set => {
      # Key prefixes the role reads, writes and deletes under: the whole lake
      # and checkpoint prefixes, or (isolate_roles) each table and checkpoint
      # location of the set's specs.
      prefixes = var.isolate_roles ? distinct(flatten([for k in members : local.spec_keys[k]])) : [var.lake_prefix, var.checkpoint_prefix]
      # The spec loader copies the whole spec prefix (s3: list and read) or,
      # isolated, the set's own spec objects (read only).
      spec_objects = var.isolate_roles ? [for k in members : "${local.spec_prefix}/${k}.yaml"] : ["${local.spec_prefix}/*"]
      spec_list    = var.isolate_roles ? [] : ["${local.spec_prefix}/*", local.spec_prefix]
      # Whether the set's compaction workers delete expired Delta log files.
      cleans_delta_log = anytrue([for k in members : local.spec_cleans_delta_log[k]])
      misplaced        = var.isolate_roles ? flatten([for k in members : [for m in local.spec_misplaced[k] : "${k}: ${m}"]]) : []
    }
  }
}

resource "aws_iam_role" "task" {
  for_each = local.pipeline_sets

  # A role name_prefix has at most 38 characters.
  name_prefix        = var.isolate_roles ? substr("tributary-${var.name}-${each.key}-", 0, 38) : "tributary-${var.name}-task-"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
  tags               = var.isolate_roles ? merge(var.tags, { "tributary:pipeline" = each.key }) : var.tags
}

data "aws_iam_policy_document" "task" {
  for_each = local.task_access

  statement {
    sid       = "ListLakePrefixes"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.lake.arn]
    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values = concat(
        flatten([for p in each.value.prefixes : ["${p}/*", p]]),
        var.spec_store == "s3" ? each.value.spec_list : [],
      )
    }
  }

  # Data files, Delta commits and log checkpoints, batch plans, intents and
  # state snapshots are written here; vacuum, failed-attempt clean-up, Delta
  # log clean-up and the retention of the offsets log and of state snapshots
  # delete objects. Under the set's prefixes only.
  statement {
    sid       = "ReadWriteTablesAndCheckpoints"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = [for p in each.value.prefixes : "${aws_s3_bucket.lake.arn}/${p}/*"]
  }

  # A Delta commit (`_delta_log/<version>.json`) is only ever created, with
  # If-None-Match: * (delta-rs's commit is a put-if-absent, so two writers
  # can never both take a version): any other write of a commit file, which
  # would replace a committed version, is refused. Only the .json commits:
  # log checkpoints (`<version>.checkpoint.parquet`) and `_last_checkpoint`
  # are plain overwriting PUTs (delta-kernel), and none of the checkpoint
  # location's objects is always put-if-absent (a batch plan is, but
  # recovery overwrites it with the table's record when another instance
  # won the batch: OffsetLog::adopt). No multipart exemption: commits are
  # single PUTs. See docs/deployment.md.
  statement {
    sid     = "DeltaCommitsOnlyIfAbsent"
    effect  = "Deny"
    actions = ["s3:PutObject"]
    resources = [
      "${aws_s3_bucket.lake.arn}/_delta_log/*.json",
      "${aws_s3_bucket.lake.arn}/*/_delta_log/*.json",
    ]
    condition {
      test     = "Null"
      variable = "s3:if-none-match"
      values   = ["true"]
    }
  }

  # Delta log files are deleted by one thing only: the compaction worker's
  # expired-log clean-up (compaction.log_retention), which runs in the same
  # task. When no spec of the set runs it, the role may delete none.
  dynamic "statement" {
    for_each = each.value.cleans_delta_log ? [] : [1]
    content {
      sid     = "KeepDeltaLog"
      effect  = "Deny"
      actions = ["s3:DeleteObject"]
      resources = [
        "${aws_s3_bucket.lake.arn}/_delta_log/*",
        "${aws_s3_bucket.lake.arn}/*/_delta_log/*",
      ]
    }
  }

  dynamic "statement" {
    for_each = var.spec_store == "s3" ? [1] : []
    content {
      sid       = "ReadSpecs"
      actions   = ["s3:GetObject"]
      resources = [for o in each.value.spec_objects : "${aws_s3_bucket.lake.arn}/${o}"]
    }
  }

  statement {
    sid       = "UseLakeKey"
    actions   = ["kms:Decrypt", "kms:GenerateDataKey"]
    resources = [aws_kms_key.lake.arn]
  }
}

resource "aws_iam_role_policy" "task" {
  for_each = local.task_access

  name   = "lake-access"
  role   = aws_iam_role.task[each.key].id
  policy = data.aws_iam_policy_document.task[each.key].json

  lifecycle {
    precondition {
      condition     = length(each.value.misplaced) == 0
      error_message = "isolate_roles confines each spec's role to its table, dead-letter and late-rows tables under lake_prefix and its checkpoint under checkpoint_prefix, written as s3:// URIs or from $${TRIBUTARY_LAKE} / $${TRIBUTARY_CHECKPOINTS}. These cannot be: ${join("; ", each.value.misplaced)}."
    }
  }
}

# Before isolate_roles there was one task role, unkeyed: it is the `all` set's.
moved {
  from = aws_iam_role.task
  to   = aws_iam_role.task["all"]
}

moved {
  from = aws_iam_role_policy.task
  to   = aws_iam_role_policy.task["all"]
}
