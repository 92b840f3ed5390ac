"""memscore.v1 messages and services, generated from protos/memscore/v1 by scripts/gen_api.py.

Do not edit: change the .proto files and rerun the script.
"""
