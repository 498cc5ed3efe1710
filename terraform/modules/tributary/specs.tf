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
