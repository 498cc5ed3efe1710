output "bootstrap_brokers" {
  description = "SASL/SCRAM bootstrap brokers of the MSK cluster (for producers)."
  value       = aws_msk_cluster.kafka.bootstrap_brokers_sasl_scram
}

output "lake_uri" {
  description = "Where the tables are."
  value       = module.tributary.lake_uri
}

output "lake_kms_key_arn" {
  description = "Key readers need kms:Decrypt on."
  value       = module.tributary.lake_kms_key_arn
}

output "service_name" {
  description = "ECS service of Tributary."
  value       = module.tributary.service_name
}

output "log_group_name" {
  description = "Tributary's logs."
  value       = module.tributary.log_group_name
}
