resource "aws_cloudwatch_log_group" "tributary" {
  name              = "/tributary/${var.name}"
  retention_in_days = var.log_retention_days
  kms_key_id        = aws_kms_key.lake.arn
  tags              = var.tags
}

resource "aws_ecs_cluster" "tributary" {
  name = "tributary-${var.name}"
  tags = var.tags

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

locals {
  specs_dir = "/etc/tributary/specs"
  state_dir = "/var/lib/tributary"

  log_configuration = {
    logDriver = "awslogs"
    options = {
      awslogs-group         = aws_cloudwatch_log_group.tributary.name
      awslogs-region        = local.region
      awslogs-stream-prefix = "tributary"
    }
  }

  # By pipeline set (specs.tf).
  environment = {
    for set, members in local.pipeline_sets : set => merge(
      {
        KAFKA_BOOTSTRAP_SERVERS = var.kafka_bootstrap_servers
        SCHEMA_REGISTRY_URL     = var.schema_registry_url
        TRIBUTARY_LAKE          = "s3://${aws_s3_bucket.lake.bucket}/${var.lake_prefix}"
        # On S3, so a replacement task finishes a crashed batch exactly.
        TRIBUTARY_CHECKPOINTS = "s3://${aws_s3_bucket.lake.bucket}/${var.checkpoint_prefix}"
        AWS_REGION            = local.region
        # Changes with any of the set's specs, so editing a spec rolls the
        # service that runs it onto it.
        TRIBUTARY_SPECS_DIGEST = sha256(jsonencode({ for k in members : k => var.specs[k] }))
      },
      var.environment,
    )
  }

  connection_secrets = concat(
    var.kafka_sasl_scram_secret_arn == null ? [] : [
      { name = "KAFKA_SASL_USERNAME", valueFrom = "${var.kafka_sasl_scram_secret_arn}:username::" },
      { name = "KAFKA_SASL_PASSWORD", valueFrom = "${var.kafka_sasl_scram_secret_arn}:password::" },
    ],
    var.schema_registry_credentials_secret_arn == null ? [] : [
      { name = "SCHEMA_REGISTRY_BASIC_AUTH", valueFrom = "${var.schema_registry_credentials_secret_arn}:basic_auth::" },
    ],
  )

  # s3: the AWS CLI copies the spec objects into the shared volume: all of
  # them, or (isolate_roles) the set's one spec, the only one its role reads.
  s3_spec_loader = {
    for set, members in local.pipeline_sets : set => {
      name                   = "load-specs"
      image                  = var.spec_loader_image
      essential              = false
      readonlyRootFilesystem = true
      command = (var.isolate_roles
        ? ["s3", "cp", "--only-show-errors", "s3://${aws_s3_bucket.lake.bucket}/${local.spec_prefix}/${members[0]}.yaml", "${local.specs_dir}/${members[0]}.yaml"]
        : ["s3", "cp", "--recursive", "--only-show-errors", "s3://${aws_s3_bucket.lake.bucket}/${local.spec_prefix}/", "${local.specs_dir}/"]
      )
      environment = [{ name = "HOME", value = "/tmp" }]
      mountPoints = [
        { sourceVolume = "specs", containerPath = local.specs_dir, readOnly = false },
        { sourceVolume = "loader-tmp", containerPath = "/tmp", readOnly = false },
      ]
      logConfiguration = local.log_configuration
    }
  }

  # ssm: ECS injects each parameter of the set as an environment variable; a
  # shell in the Tributary image writes them out as files.
  ssm_spec_loader = {
    for set, members in local.pipeline_sets : set => {
      name                   = "load-specs"
      image                  = var.image
      essential              = false
      readonlyRootFilesystem = true
      # The task-local volume is root-owned until written; Tributary itself runs as 10001.
      user       = "0"
      entryPoint = ["/bin/sh", "-c"]
      command = [join(" && ", [
        for i, n in sort(members) : "printf '%s' \"$TRIBUTARY_SPEC_${i}\" > ${local.specs_dir}/${n}.yaml"
      ])]
      secrets = [
        for i, n in sort(members) : { name = "TRIBUTARY_SPEC_${i}", valueFrom = try(aws_ssm_parameter.spec[n].arn, "") }
      ]
      mountPoints      = [{ sourceVolume = "specs", containerPath = local.specs_dir, readOnly = false }]
      logConfiguration = local.log_configuration
    }
  }

  tributary_container = {
    for set, members in local.pipeline_sets : set => {
      name                   = "tributary"
      image                  = var.image
      essential              = true
      readonlyRootFilesystem = true
      command                = ["run", "--spec", local.specs_dir]
      dependsOn              = [{ containerName = "load-specs", condition = "SUCCESS" }]
      environment            = [for k, v in local.environment[set] : { name = k, value = v }]
      secrets                = local.connection_secrets
      mountPoints = [
        { sourceVolume = "specs", containerPath = local.specs_dir, readOnly = true },
        { sourceVolume = "state", containerPath = local.state_dir, readOnly = false },
      ]
      healthCheck = {
        command     = ["CMD", "tributary", "healthcheck"]
        interval    = 30
        timeout     = 5
        retries     = 3
        startPeriod = 60
      }
      # SIGTERM commits the batch in flight; give it the most Fargate allows.
      stopTimeout      = 120
      ulimits          = [{ name = "nofile", softLimit = 65536, hardLimit = 65536 }]
      logConfiguration = local.log_configuration
    }
  }

  # The service of the set `all` keeps the names it had before isolate_roles.
  set_suffix = { for set in keys(local.pipeline_sets) : set => var.isolate_roles ? "-${set}" : "" }
}

# One task definition and one service per pipeline set, each with its
# set's task role.
resource "aws_ecs_task_definition" "tributary" {
  for_each = local.pipeline_sets

  family                   = "tributary-${var.name}${local.set_suffix[each.key]}"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.cpu
  memory                   = var.memory
  execution_role_arn       = aws_iam_role.execution.arn
  task_role_arn            = aws_iam_role.task[each.key].arn
  tags                     = var.tags

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = "X86_64"
  }

  ephemeral_storage {
    size_in_gib = var.ephemeral_storage_gib
  }

  # Task-local volumes: the specs the loader writes, Tributary's state.
  volume {
    name = "specs"
  }
  volume {
    name = "state"
  }
  volume {
    name = "loader-tmp"
  }

  # The two loaders are objects of different types, which a conditional
  # cannot return: choose between their JSON texts instead.
  container_definitions = format("[%s,%s]",
    var.spec_store == "s3" ? jsonencode(local.s3_spec_loader[each.key]) : jsonencode(local.ssm_spec_loader[each.key]),
    jsonencode(local.tributary_container[each.key]),
  )
}

resource "aws_ecs_service" "tributary" {
  for_each = local.pipeline_sets

  name                               = "tributary-${var.name}${local.set_suffix[each.key]}"
  cluster                            = aws_ecs_cluster.tributary.id
  task_definition                    = aws_ecs_task_definition.tributary[each.key].arn
  desired_count                      = var.desired_count
  launch_type                        = "FARGATE"
  deployment_minimum_healthy_percent = var.deployment_minimum_healthy_percent
  deployment_maximum_percent         = var.deployment_minimum_healthy_percent == 0 ? 100 : 200
  enable_execute_command             = false
  propagate_tags                     = "SERVICE"
  tags                               = var.tags

  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.tributary.id]
    assign_public_ip = false
  }

  deployment_circuit_breaker {
    enable   = true
    rollback = true
  }
}

# Before isolate_roles there was one task definition and one service,
# unkeyed: they are the `all` set's.
moved {
  from = aws_ecs_task_definition.tributary
  to   = aws_ecs_task_definition.tributary["all"]
}

moved {
  from = aws_ecs_service.tributary
  to   = aws_ecs_service.tributary["all"]
}
