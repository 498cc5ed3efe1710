output "cluster_arn" {
  description = "ECS cluster of the service."
  value       = aws_ecs_cluster.tributary.arn
}

output "service_name" {
  description = "ECS service running the specs; null with isolate_roles (see service_names)."
  value       = var.isolate_roles ? null : try(aws_ecs_service.tributary["all"].name, null)
}

output "service_names" {
  description = "ECS service of each pipeline set: { all = name }, or with isolate_roles { spec = name }."
  value       = { for set, s in aws_ecs_service.tributary : set => s.name }
}

output "task_role_arn" {
  description = "Role of the running tasks (lake read/write); null with isolate_roles (see task_role_arns)."
  value       = var.isolate_roles ? null : try(aws_iam_role.task["all"].arn, null)
}

output "task_role_arns" {
  description = "Task role of each pipeline set: { all = arn }, or with isolate_roles { spec = arn }."
  value       = { for set, r in aws_iam_role.task : set => r.arn }
}

output "security_group_id" {
  description = "Security group of the tasks; allow it on the brokers' and the registry's ingress."
  value       = aws_security_group.tributary.id
}

output "lake_bucket" {
  description = "Name of the lake bucket."
  value       = aws_s3_bucket.lake.bucket
}

output "lake_uri" {
  description = "Where the tables are: s3://<bucket>/<prefix>/<table>."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}"
}

output "checkpoint_uri" {
  description = "Where the checkpoints are: s3://<bucket>/<prefix>/<pipeline>."
  value       = "s3://${aws_s3_bucket.lake.bucket}/${var.checkpoint_prefix}"
}

output "lake_kms_key_arn" {
  description = "KMS key of the lake; readers (Spark, Trino, ...) need kms:Decrypt on it."
  value       = aws_kms_key.lake.arn
}

output "log_group_name" {
  description = "CloudWatch log group of the tasks."
  value       = aws_cloudwatch_log_group.tributary.name
}
