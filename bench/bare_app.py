"""The ceiling: a bare Litestar endpoint that reads the body and answers 200, nothing else."""

from typing import Any

from litestar import Litestar, Request, post


@post("/webhooks/{integration_id:str}", status_code=200)
async def receive(request: Request[Any, Any, Any]) -> dict[str, str]:
    await request.body()
    return {"status": "accepted"}


app = Litestar([receive], logging_config=None)
